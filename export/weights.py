"""Where the weights come from: timm's hub weights, a local checkpoint, or seeded random init.

The choice is explicit (``WEIGHTS=hub|PATH|random``); there is no silent fallback to random weights.
A local checkpoint may be a timm file, a timm hub folder or a Hugging Face transformers ViT
(export/checkpoints.py says what each dictates). Provenance (source, file names, sha256, seed; never a
path of the build machine) goes into every artifact's metadata.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from vitrt.errors import BuildError
from vitrt.metadata import sha256_file

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def create_model(model_name: str, model_kwargs: dict | None = None, **extra: Any):
    """timm model in eval mode, built with ``exportable=True`` (attention as plain MatMul/Softmax).
    ``norm_eps`` in ``model_kwargs`` (a Hugging Face checkpoint's layer_norm_eps) becomes timm's
    ``norm_layer``, so that the kwargs stay JSON for the artifact's metadata."""
    import timm

    kwargs = dict(model_kwargs or {})
    if "norm_eps" in kwargs:
        import functools

        from torch import nn

        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=float(kwargs.pop("norm_eps")))
    return timm.create_model(model_name, exportable=True, **kwargs, **extra).eval()


@dataclasses.dataclass
class Loaded:
    model: Any
    provenance: dict
    model_name: str  # the architecture built: the checkpoint's where it says, else the one asked
    model_kwargs: dict  # what built it, the class count from the checkpoint's head included
    class_names: list[str] | None = None  # from the checkpoint (id2label, label_names), if any


def load(model_name: str | None, weights: str = "hub", *, seed: int = 0, model_kwargs: dict | None = None,
         default_model: str | None = None) -> Loaded:
    """Build the model with the chosen weights. ``model_name`` None: the checkpoint's architecture, else
    ``default_model``; a checkpoint whose config names another architecture than ``model_name`` is an error."""
    kwargs = dict(model_kwargs or {})
    from . import real_weights

    if weights == real_weights.WEIGHTS_KEY:
        return _real(model_name, kwargs)
    if weights in ("hub", "random"):
        name = model_name or default_model
        if weights == "hub":
            model, prov = _from_hub(name, kwargs)
        else:
            import torch

            torch.manual_seed(seed)
            model = create_model(name, kwargs, pretrained=False)
            prov = {"source": "random", "seed": seed, "sha256": None,
                    "note": "seeded random init: for tests and smoke builds, predictions are meaningless"}
        return Loaded(model, prov, name, kwargs)
    from . import checkpoints

    ckpt = checkpoints.find(weights)
    if ckpt.model_name and model_name and _arch(model_name) != _arch(ckpt.model_name):
        raise BuildError(f"MODEL={model_name} but the checkpoint's config.json is a {ckpt.model_name}; expected "
                         "MODEL= unset (the checkpoint's own architecture) or the same one")
    name = ckpt.model_name if ckpt.kind != "timm-file" else None
    name = model_name if name is None or (model_name and _arch(model_name) == _arch(name)) else name
    name = name or default_model
    state = read_state_dict(ckpt.weights)
    if ckpt.kind == "transformers":
        if "classifier.weight" in state or "vit.classifier.weight" in state:
            n = int((state.get("classifier.weight", state.get("vit.classifier.weight"))).shape[0])
            if ckpt.class_names and len(ckpt.class_names) != n:
                raise BuildError(f"config.json's id2label names {len(ckpt.class_names)} classes and the classifier has "
                                 f"{n}; expected the config the checkpoint was saved with")
            ckpt.model_kwargs["num_classes"] = n
        depth = int(ckpt.config["num_hidden_layers"])
        state = checkpoints.convert_hf_state(state, depth)
    for k, v in ckpt.model_kwargs.items():
        kwargs.setdefault(k, v)
    head = state.get("head.weight")
    if head is not None and getattr(head, "ndim", 0) == 2 and "num_classes" not in kwargs:
        kwargs["num_classes"] = int(head.shape[0])  # a fine-tune's head: its class count, not ImageNet's
    model = create_model(name, kwargs, pretrained=False)
    if ckpt.pretrained_cfg:
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **ckpt.pretrained_cfg}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) < 600 else detail[:600] + " ..."
        raise BuildError(f"weights file {ckpt.weights.name!r} does not fit {name!r} (kwargs {kwargs}): {detail}. "
                         "Expected a checkpoint of that architecture: pass MODEL=<the timm name it was trained as> "
                         "(e.g. vit_small_patch16_384), or --model-kwargs '{...}' (EXPORT_ARGS=) for an "
                         "architecture change") from None
    prov = {"source": {"timm-file": "file", "timm-folder": "timm-folder", "transformers": "transformers"}[ckpt.kind],
            "file": ckpt.weights.name, "sha256": ckpt.files.get(ckpt.weights.name) or sha256_file(ckpt.weights)}
    others = {k: v for k, v in ckpt.files.items() if k != ckpt.weights.name}
    if others:
        prov["configs"] = others
    return Loaded(model, prov, name, kwargs, ckpt.class_names)


def _real(model_name: str | None, kwargs: dict) -> Loaded:
    """WEIGHTS=dinov2: the trained DINOv2 ViT-S backbone mapped onto timm's vit_small_patch16_384
    (export/real_weights.py), fetched and mapped once into the cache."""
    from . import real_weights

    name = model_name or real_weights.MODEL
    if _arch(name) != _arch(real_weights.MODEL) or kwargs:
        raise BuildError(f"WEIGHTS={real_weights.WEIGHTS_KEY} is a {real_weights.MODEL}; got MODEL={name} "
                         f"{'with kwargs ' + str(kwargs) if kwargs else ''}; expected MODEL= unset (or that model) "
                         "and no --model-kwargs")
    path, prov = real_weights.ensure()
    model = create_model(name, {}, pretrained=False)
    model.load_state_dict(read_state_dict(path), strict=True)
    return Loaded(model, prov, name, {})


def _arch(name: str) -> str:
    """timm's architecture of a model name (without its pretrained tag)."""
    return name.split(".", 1)[0]


def load_model(model_name: str, weights: str = "hub", *, seed: int = 0,
               model_kwargs: dict | None = None) -> tuple[Any, dict[str, Any]]:
    """Build the model with the chosen weights. Returns ``(model, provenance)`` (:func:`load` has more)."""
    loaded = load(model_name, weights, seed=seed, model_kwargs=model_kwargs)
    return loaded.model, loaded.provenance


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


