"""What a checkpoint says about the model it holds: architecture, class count and names, preprocessing.

``WEIGHTS=`` (``--weights``) may name:

- a timm checkpoint file (.safetensors/.pth/.pt/.bin): ``MODEL=`` names the architecture (default
  ViT-B/16-384); the class count comes from the checkpoint's head (``head.weight``);
- a timm hub folder, or its weights file with ``config.json`` beside it (``"architecture"``,
  ``"num_classes"``, ``"label_names"``, ``"pretrained_cfg"``, ``"model_args"``): all of those from there;
- a Hugging Face transformers ViT (``config.json`` with ``"model_type": "vit"``, ``model.safetensors`` or
  ``pytorch_model.bin``, ``preprocessor_config.json``; ``ViTForImageClassification``), folder or weights
  file: the timm architecture picked by width, heads and MLP size (ViT-S/B/L at patch 16; the depth as
  a kwarg where it differs), the LayerNorm eps from the config, the tensors mapped onto timm's names
  here (transformers is not needed), classes from ``id2label``, preprocessing from the processor.

``CLASS_NAMES=`` (:func:`read_class_names`) overrides a checkpoint's names. Nothing here records a path
of the build machine: provenance is file names and sha256.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from vitrt.errors import BuildError
from vitrt.metadata import sha256_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
#: (hidden size, heads, MLP size) -> (timm architecture, its depth): the ViTs at patch 16 and 384 timm has
HF_ARCHITECTURES = {(384, 6, 1536): ("vit_small_patch16_384", 12), (768, 12, 3072): ("vit_base_patch16_384", 12),
                    (1024, 16, 4096): ("vit_large_patch16_384", 24)}
#: PIL's resample codes, as transformers' processors store them
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
CONTRACT = ("vitrt's contract is a fixed 384x384 input at patch 16 (ViT-S/B/L); fine-tune the model at 384 first "
            "(timm resamples the position embeddings: timm.create_model(name, img_size=384, pretrained=True))")


@dataclasses.dataclass
class Checkpoint:
    kind: str  # "timm-file" | "timm-folder" | "transformers"
    weights: Path  # the tensors
    config: dict | None = None
    model_name: str | None = None  # the architecture the checkpoint dictates (folders)
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    class_names: list[str] | None = None
    pretrained_cfg: dict | None = None  # timm data-config keys: input_size, interpolation, mean, std, crop_*
    files: dict = dataclasses.field(default_factory=dict)  # file name -> sha256, for provenance


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BuildError(f"{path.name} beside the weights cannot be read as JSON ({exc}); expected the config the "
                         "checkpoint was saved with") from None
    if not isinstance(data, dict):
        raise BuildError(f"{path.name} holds a {type(data).__name__}; expected a JSON object")
    return data


def find(weights: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``weights`` (a file or a folder), with what its config says."""
    path = Path(weights).expanduser()
    if path.is_dir():
        folder = path
        if (folder / "model.safetensors.index.json").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
            raise BuildError(f"{folder.name}/ holds a sharded checkpoint; expected one weights file (a ViT up to "
                             "ViT-L fits in one: save it with max_shard_size larger than the model)")
        files = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
        if not files:
            raise BuildError(f"folder {os.fspath(folder)!r} has none of {', '.join(WEIGHT_FILES)}; expected a Hugging "
                             "Face or timm checkpoint folder, or WEIGHTS=a .safetensors/.pth/.bin file")
        if not (folder / "config.json").is_file():
            raise BuildError(f"folder {os.fspath(folder)!r} has no config.json; expected a Hugging Face or timm "
                             "checkpoint folder (or pass its weights file with MODEL=)")
        weights_file = files[0]
    else:
        folder, weights_file = path.parent, path
        if not (folder / "config.json").is_file():
            return Checkpoint("timm-file", weights_file)
    config = _json(folder / "config.json")
    if "model_type" in config:
        return _transformers(folder, weights_file, config)
    if "architecture" in config:
        return _timm_folder(folder, weights_file, config)
    if path.is_dir():
        raise BuildError(f"{os.fspath(folder)!r}/config.json has neither model_type (Hugging Face) nor architecture "
                         "(timm); expected a checkpoint folder saved by transformers or timm")
    return Checkpoint("timm-file", weights_file)  # an unrelated config.json beside a timm checkpoint


def _files(*paths: Path) -> dict:
    return {p.name: sha256_file(p) for p in paths if p.is_file()}


def _timm_folder(folder: Path, weights: Path, config: dict) -> Checkpoint:
    kwargs = dict(config.get("model_args") or {})
    if config.get("num_classes") is not None:
        kwargs["num_classes"] = int(config["num_classes"])
    cfg = config.get("pretrained_cfg") or {}
    data = {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode") if k in cfg}
    return Checkpoint("timm-folder", weights, config, str(config["architecture"]), kwargs,
                      list(config["label_names"]) if config.get("label_names") else None, data or None,
                      _files(weights, folder / "config.json"))


def _transformers(folder: Path, weights: Path, config: dict) -> Checkpoint:
    kind = config.get("model_type")
    size, patch = config.get("image_size"), config.get("patch_size")
    if kind != "vit" or size != 384 or patch != 16:
        raise BuildError(f"{folder.name}/config.json is a {kind!r} model with image_size {size} and patch_size "
                         f"{patch}; expected a Hugging Face ViT (model_type 'vit') at 384 with patch 16: {CONTRACT}")
    key = (config.get("hidden_size"), config.get("num_attention_heads"), config.get("intermediate_size"))
    if key not in HF_ARCHITECTURES:
        raise BuildError(f"{folder.name}/config.json has hidden_size {key[0]}, {key[1]} heads and intermediate_size "
                         f"{key[2]}; expected ViT-S (384, 6, 1536), ViT-B (768, 12, 3072) or ViT-L (1024, 16, 4096)")
    if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True) or config.get("num_channels", 3) != 3:
        raise BuildError(f"{folder.name}/config.json has hidden_act {config.get('hidden_act')!r}, qkv_bias "
                         f"{config.get('qkv_bias')!r}, num_channels {config.get('num_channels')!r}; expected gelu, "
                         "true and 3 (what timm's ViT computes)")
    name, depth = HF_ARCHITECTURES[key]
    kwargs: dict[str, Any] = {"norm_eps": float(config.get("layer_norm_eps", 1e-12))}
    if int(config["num_hidden_layers"]) != depth:
        kwargs["depth"] = int(config["num_hidden_layers"])
    labels = config.get("id2label") or {}
    if labels:
        kwargs["num_classes"] = len(labels)
    processor = folder / "preprocessor_config.json"
    data = hf_data_config(_json(processor) if processor.is_file() else {}, processor.name)
    return Checkpoint("transformers", weights, config, name, kwargs, _ordered(labels, "id2label") if labels else None,
                      data, _files(weights, folder / "config.json", processor))


def hf_data_config(proc: dict, where: str = "preprocessor_config.json") -> dict:
    """timm's data-config keys for a transformers ViT processor (``ViTImageProcessor``'s defaults where
    the processor is absent: both sides resized to 384, bilinear, mean and std 0.5)."""
    if proc.get("do_rescale", True) and not math.isclose(float(proc.get("rescale_factor", 1 / 255)), 1 / 255):
        raise BuildError(f"{where}: rescale_factor {proc.get('rescale_factor')}; expected 1/255 (uint8 to [0, 1])")
    if not proc.get("do_resize", True):
        raise BuildError(f"{where}: do_resize false; expected a processor that resizes to 384 (the artifact's input)")
    resample = proc.get("resample", 2)
    if resample not in PIL_RESAMPLE:
        raise BuildError(f"{where}: resample {resample!r}; expected one of PIL's codes {sorted(PIL_RESAMPLE)}")
    mean = list(proc.get("image_mean", [0.5] * 3)) if proc.get("do_normalize", True) else [0.0] * 3
    std = list(proc.get("image_std", [0.5] * 3)) if proc.get("do_normalize", True) else [1.0] * 3
    size = _size_dict(proc.get("size", {"height": 384, "width": 384}), where, "size")
    crop = _size_dict(proc.get("crop_size"), where, "crop_size") if proc.get("do_center_crop") else None
    cfg = {"input_size": [3, 384, 384], "interpolation": PIL_RESAMPLE[resample], "mean": mean, "std": std}
    crop_hw = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (384, 384)
    if crop_hw != (384, 384):
        raise BuildError(f"{where}: crop_size {crop}; expected 384x384 (the artifact's input)")
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if crop is None and edge != 384:
            raise BuildError(f"{where}: size {size} without a center crop; expected shortest_edge 384 or a 384 crop")
        return {**cfg, "crop_mode": "center", "crop_pct": _crop_pct(edge)}
    if not (isinstance(size, dict) and size.get("height") == size.get("width") and size.get("height")):
        raise BuildError(f"{where}: size {size}; expected {{'height': H, 'width': H}} or {{'shortest_edge': S}}")
    edge = int(size["height"])
    if crop is None and edge != 384:
        raise BuildError(f"{where}: size {size} without a center crop; expected 384x384 (the artifact's input)")
    return {**cfg, "crop_mode": "squash", "crop_pct": _crop_pct(edge)}


def _size_dict(value, where: str, key: str) -> dict | None:
    """A processor's ``size`` / ``crop_size`` in every form transformers reads for a ViT
    (``get_size_dict(..., default_to_square=True)``): an int (the legacy ``ViTFeatureExtractor`` configs of
    google/vit-*: both sides), a [height, width] pair, or a dict."""
    if isinstance(value, dict):
        if set(value) not in ({"height", "width"}, {"shortest_edge"}):  # e.g. longest_edge caps the long side
            raise BuildError(f"{where}: {key} {value}; expected {{'height': H, 'width': W}} or {{'shortest_edge': S}} "
                             "(a longest_edge or other keys resize differently)")
        return value
    if value is None:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return {"height": value, "width": value}
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return {"height": value[0], "width": value[1]}
    raise BuildError(f"{where}: {key} {value!r}; expected an int, [height, width], {{'height': H, 'width': W}} or "
                     "{'shortest_edge': S}")


def _crop_pct(edge: int) -> float:
    """The crop_pct for which timm's floor(384 / crop_pct) is ``edge``."""
    pct = 384 / edge
    while math.floor(384 / pct) != edge:  # a float a hair off: nudge it down until the floor lands
        pct = math.nextafter(pct, 0)
    return pct


def _ordered(mapping: dict, where: str) -> list[str]:
    """``{index: name}`` (keys as int or text) -> names by index 0..n-1."""
    try:
        items = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise BuildError(f"{where} has keys {list(mapping)[:3]}...; expected class indices 0..N-1") from None
    if sorted(items) != list(range(len(items))):
        raise BuildError(f"{where} has indices {sorted(items)[:5]}... for {len(items)} classes; expected 0..{len(items) - 1}")
    return [items[i] for i in range(len(items))]


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one a line), a JSON list, a JSON object of index -> name, or a Hugging
    Face ``config.json`` (its ``id2label``) or timm's (its ``label_names``)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"CLASS_NAMES {os.fspath(path)!r} cannot be read ({exc}); expected a UTF-8 text or JSON file") from None
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BuildError(f"CLASS_NAMES {path.name} is not valid JSON ({exc}); expected a list, an object of "
                             "index -> name, or a config.json with id2label") from None
        if isinstance(data, dict) and "id2label" in data:
            names = _ordered(data["id2label"], f"{path.name} id2label")
        elif isinstance(data, dict) and "label_names" in data:
            names = [str(n) for n in data["label_names"]]
        elif isinstance(data, dict):
            names = _ordered(data, path.name)
        elif isinstance(data, list) and all(isinstance(n, str) for n in data):
            names = list(data)
        else:
            raise BuildError(f"CLASS_NAMES {path.name} holds a {type(data).__name__}; expected a list of names, an "
                             "object of index -> name, or a config.json with id2label")
    else:
        names = text.splitlines()
        while names and not names[-1].strip():
            names.pop()
    blank = [i for i, n in enumerate(names) if not n.strip() or "\n" in n or "\r" in n]
    if not names or blank:
        raise BuildError(f"CLASS_NAMES {path.name}: " + ("no names" if not names else f"name {blank[0]} is blank or "
                         "holds a line break") + "; expected one non-empty name per class")
    return [n.strip() for n in names]


def convert_hf_state(state: dict, depth: int) -> dict:
    """A transformers ``ViTForImageClassification`` state dict -> timm ``VisionTransformer`` names: query,
    key and value concatenated into qkv; layernorm_before/after -> norm1/2; intermediate/output.dense ->
    mlp.fc1/fc2; classifier -> head. Both transformers' file names (``encoder.layer.N.attention.attention.
    query``) and its in-memory names from version 5 (``layers.N.attention.q_proj``) are read."""
    import torch

    src = {k.removeprefix("vit."): v for k, v in state.items()}
    used: set[str] = set()

    def take(*names: str):
        for n in names:
            if n in src:
                used.add(n)
                return src[n]
        raise BuildError(f"the transformers checkpoint has none of {names}; expected a ViTForImageClassification "
                         "state dict (from save_pretrained)")

    out = {"cls_token": take("embeddings.cls_token"), "pos_embed": take("embeddings.position_embeddings"),
           "patch_embed.proj.weight": take("embeddings.patch_embeddings.projection.weight"),
           "patch_embed.proj.bias": take("embeddings.patch_embeddings.projection.bias"),
           "norm.weight": take("layernorm.weight"), "norm.bias": take("layernorm.bias")}
    for i in range(depth):
        old, new = f"encoder.layer.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(
                [take(f"{old}attention.attention.{n}.{p}", f"{new}attention.{m}_proj.{p}")
                 for n, m in (("query", "q"), ("key", "k"), ("value", "v"))])
            out[f"blocks.{i}.attn.proj.{p}"] = take(f"{old}attention.output.dense.{p}", f"{new}attention.o_proj.{p}")
            out[f"blocks.{i}.norm1.{p}"] = take(f"{old}layernorm_before.{p}", f"{new}layernorm_before.{p}")
            out[f"blocks.{i}.norm2.{p}"] = take(f"{old}layernorm_after.{p}", f"{new}layernorm_after.{p}")
            out[f"blocks.{i}.mlp.fc1.{p}"] = take(f"{old}intermediate.dense.{p}", f"{new}mlp.fc1.{p}")
            out[f"blocks.{i}.mlp.fc2.{p}"] = take(f"{old}output.dense.{p}", f"{new}mlp.fc2.{p}")
    if "classifier.weight" not in src:
        raise BuildError("the transformers checkpoint has no classifier; expected ViTForImageClassification (a "
                         "ViTModel has no head: vitrt's artifacts output logits)")
    out["head.weight"], out["head.bias"] = take("classifier.weight"), take("classifier.bias")
    left = sorted(set(src) - used)
    if left:
        raise BuildError(f"the transformers checkpoint has tensors vitrt does not map: {left[:4]}"
                         f"{' ...' if len(left) > 4 else ''}; expected a ViTForImageClassification of "
                         f"{depth} layers")
    return out
