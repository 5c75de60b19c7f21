"""Where the weights come from: timm's hub weights, a local checkpoint, or seeded random init.

The choice is explicit (``WEIGHTS=hub|PATH|random``); there is no silent fallback to random weights.
Provenance (source, file, sha256, seed) goes into every artifact's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitrt.errors import BuildError
from vitrt.metadata import sha256_file

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def create_model(model_name: str, model_kwargs: dict | None = None, **extra: Any):
    """timm model in eval mode, built with ``exportable=True`` (attention as plain MatMul/Softmax)."""
    import timm

    return timm.create_model(model_name, exportable=True, **(model_kwargs or {}), **extra).eval()


def load_model(model_name: str, weights: str = "hub", *, seed: int = 0,
               model_kwargs: dict | None = None) -> tuple[Any, dict[str, Any]]:
    """Build the model with the chosen weights. Returns ``(model, provenance)``."""
    if weights == "hub":
        return _from_hub(model_name, model_kwargs)
    if weights == "random":
        import torch

        torch.manual_seed(seed)
        model = create_model(model_name, model_kwargs, pretrained=False)
        return model, {"source": "random", "seed": seed, "sha256": None,
                       "note": "seeded random init: for tests and smoke builds, predictions are meaningless"}
    return _from_file(model_name, Path(weights), model_kwargs)


def _from_hub(model_name: str, model_kwargs: dict | None):
    import timm
    from huggingface_hub import hf_hub_download

    cfg = timm.models.get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise BuildError(f"timm has no Hugging Face hub weights for {model_name!r}; "
                         "pass WEIGHTS=/path/to/checkpoint.safetensors (or .pth/.bin) or WEIGHTS=random")
    try:
        path = hf_hub_download(repo_id=repo, filename="model.safetensors")
    except Exception as exc:  # offline, DNS, HTTP 4xx/5xx, ...: huggingface_hub has many types
        raise BuildError(
            f"could not download the pretrained weights of {model_name!r} from the Hugging Face hub "
            f"({repo}): {type(exc).__name__}: {str(exc).rstrip('.')}. Either pass a local checkpoint with "
            "WEIGHTS=/path/to/model.safetensors (or .pth/.bin; CLI --weights PATH), or build with random "
            "weights for a smoke test with WEIGHTS=random (CLI --weights random)."
        ) from None
    model = create_model(model_name, model_kwargs, pretrained=True, pretrained_cfg_overlay={"file": path})
    return model, {"source": "hub", "repo": repo, "file": "model.safetensors", "sha256": sha256_file(path)}


def read_state_dict(path: Path) -> dict:
    """A checkpoint's tensors: safetensors, or torch.load(weights_only=True) (never unpickles code)."""
    if not path.is_file():
        raise BuildError(f"weights file {os.fspath(path)!r} does not exist; expected WEIGHTS=hub, "
                         f"WEIGHTS=random or a path to a {'/'.join(CHECKPOINT_SUFFIXES)} checkpoint")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise BuildError(f"weights file {os.fspath(path)!r} has suffix {suffix!r}; expected one of {CHECKPOINT_SUFFIXES}")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(os.fspath(path), device="cpu")
        else:
            import torch

            state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BuildError(f"could not read weights file {os.fspath(path)!r}: {type(exc).__name__}: {exc}") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise BuildError(f"weights file {os.fspath(path)!r} holds a {type(state).__name__}; expected a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _from_file(model_name: str, path: Path, model_kwargs: dict | None):
    state = read_state_dict(path)
    model = create_model(model_name, model_kwargs, pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) < 600 else detail[:600] + " ..."
        raise BuildError(f"weights file {os.fspath(path)!r} does not fit {model_name!r} "
                         f"(kwargs {model_kwargs or {}}): {detail}") from None
    return model, {"source": "file", "file": path.name, "path": os.fspath(path.resolve()), "sha256": sha256_file(path)}
