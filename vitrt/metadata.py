"""The metadata that travels with every vitrt artifact (DESIGN.md, "Artifact contract").

ONNX files carry it as JSON under the ``metadata_props`` key ``"vitrt"``; TensorRT plans carry it in
a ``<plan>.json`` sidecar. :class:`Metadata` wraps the dict and answers what the runtime needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ArtifactError, MetadataError

ONNX_KEY = "vitrt"
FORMAT = 1
REQUIRED = ("format", "model", "data_config", "input", "outputs", "batch", "precision", "weights")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


PRECISIONS = ("fp32", "fp16", "int8", "fp8", "int8-cpu")
REBUILD = "Rebuild the artifact with `make engine`."


def _int(v: Any, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def validate(data: Any, source: str) -> None:
    """The whole metadata, checked once against one schema; MetadataError names the first bad field
    with what it holds and what was expected."""
    from .errors import InputError
    from .preprocess import check_data_config

    def fail(field: str, value: Any, expected: str):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."
        raise MetadataError(f"{source}: metadata {field} is {shown}; expected {expected}. {REBUILD}")

    if not isinstance(data, dict):
        fail("", type(data).__name__, "a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise MetadataError(f"{source}: metadata lacks {missing}; expected the keys {list(REQUIRED)}. {REBUILD}")
    if data["format"] != FORMAT:
        raise MetadataError(f"{source}: metadata format {data['format']!r}; expected format {FORMAT} (what this vitrt reads). {REBUILD}")
    model = data["model"]
    if not isinstance(model, dict):
        fail("model", model, "an object with name, num_classes, num_features")
    if not isinstance(model.get("name"), str):
        fail("model.name", model.get("name"), "a timm model name")
    for key in ("num_classes", "num_features"):
        if not _int(model.get(key)):
            fail(f"model.{key}", model.get(key), "a positive integer")
    try:
        check_data_config(data["data_config"], "data_config")
    except InputError as exc:
        raise MetadataError(f"{source}: metadata {exc}. {REBUILD}") from None
    if data.get("labels") is not None and not isinstance(data["labels"], str):
        fail("labels", data["labels"], "a label set name (imagenet-1k) or null")
    if data.get("labels") == "imagenet-1k" and model["num_classes"] != 1000:
        fail("labels", data["labels"], f"null for a {model['num_classes']}-class model (imagenet-1k has 1000)")
    names = data.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == model["num_classes"]
                                  and all(isinstance(n, str) for n in names)):
        fail("class_names", names, f"null or a list of {model['num_classes']} strings (one per class)")
    if not isinstance(data["weights"], dict):
        fail("weights", data["weights"], "an object (source, sha256, ...)")
    if data["precision"] not in PRECISIONS:
        fail("precision", data["precision"], f"one of {', '.join(PRECISIONS)}")
    inp = data["input"]
    if not isinstance(inp, dict) or not isinstance(inp.get("name"), str) or not inp.get("name"):
        fail("input", inp, "an object with name, dtype, layout, shape")
    h, w = data["data_config"]["input_size"][1:]
    layouts = {("uint8", "NHWC"): [h, w, 3], ("float32", "NCHW"): [3, h, w]}
    item = layouts.get((inp.get("dtype"), inp.get("layout")))
    if item is None:
        fail("input dtype/layout", (inp.get("dtype"), inp.get("layout")), "uint8 NHWC or float32 NCHW")
    shape = inp.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and list(shape[1:]) == item):
        fail("input.shape", shape, f"['N', {', '.join(map(str, item))}] (from data_config.input_size)")
    outs = data["outputs"]
    if not isinstance(outs, dict):
        fail("outputs", outs, "an object: output name -> {dtype, shape}")
    want = {"logits": model["num_classes"], "embedding": model["num_features"]}
    for name, width in want.items():
        spec = outs.get(name)
        if not isinstance(spec, dict) or spec.get("dtype") != "float32" or not isinstance(spec.get("shape"), list) \
                or len(spec["shape"]) != 2 or spec["shape"][1] != width:
            fail(f"outputs.{name}", spec, f"{{'dtype': 'float32', 'shape': ['N', {width}]}}")
    for name, spec in outs.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str) or not isinstance(spec.get("shape"), list) \
                or not all(_int(d) for d in spec["shape"][1:]):
            fail(f"outputs.{name}", spec, "{'dtype': ..., 'shape': ['N', positive integers...]}")
    batch = data["batch"]
    if not isinstance(batch, dict) or not _int(batch.get("min")) or not _int(batch.get("max")) \
            or batch["max"] < batch["min"] or ("opt" in batch and not (_int(batch["opt"]) and
                                                                        batch["min"] <= batch["opt"] <= batch["max"])):
        fail("batch", batch, "{'min': >= 1, 'opt': between, 'max': >= min}")
    plan = data.get("plan")
    if plan is not None:
        if not isinstance(plan, dict):
            fail("plan", plan, "an object (a plan sidecar's plan section)")
        digest = plan.get("sha256")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            fail("plan.sha256", digest, "64 lowercase hex digits")
        if not isinstance(plan.get("tensorrt"), str):
            fail("plan.tensorrt", plan.get("tensorrt"), "the TensorRT version that built the plan")
    if data.get("gate") is not None and not isinstance(data["gate"], dict):
        fail("gate", data["gate"], "subset -> output -> metric -> limit")


class Metadata:
    """A validated view of an artifact's metadata dict."""

    def __init__(self, data: dict[str, Any], source: str = "artifact"):
        validate(data, source)
        self.data = data
        self.source = source

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, path: str | os.PathLike) -> "Metadata":
        from .onnx_meta import read_metadata_props

        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise MetadataError(f"{os.fspath(path)!r} cannot be read ({exc.strerror or exc}); expected an ONNX "
                                "file built by `make engine`") from None
        if size == 0:
            raise MetadataError(f"{os.fspath(path)!r} is empty (0 bytes); expected an ONNX file. {REBUILD}")
        try:
            props = read_metadata_props(path)
        except MetadataError:
            raise
        except ArtifactError as exc:
            raise ArtifactError(f"{os.fspath(path)!r}: {exc}. {REBUILD}") from None
        if ONNX_KEY not in props:
            raise MetadataError(
                f"{os.fspath(path)!r} has no vitrt metadata (metadata_props key {ONNX_KEY!r}); expected an "
                "ONNX file exported by vitrt (`make engine` or `python -m export`)"
            )
        return cls(_loads(props[ONNX_KEY], path), source=os.fspath(path))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "Metadata":
        p = Path(path)
        if not p.is_file():
            raise MetadataError(f"metadata file {os.fspath(p)!r} is missing; expected it beside the artifact. "
                                "Rebuild with `make engine`.")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MetadataError(f"{os.fspath(p)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); expected "
                                f"the JSON sidecar `make engine` writes. {REBUILD}") from None
        except OSError as exc:
            raise MetadataError(f"{os.fspath(p)!r} cannot be read ({exc.strerror or exc}); expected the JSON "
                                "sidecar beside the plan") from None
        return cls(_loads(text, p), source=os.fspath(p))

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True)

    # --- what the runtime needs ----------------------------------------------------------
    @property
    def input_name(self) -> str:
        return self.data["input"]["name"]

    @property
    def input_dtype(self) -> str:
        return self.data["input"]["dtype"]

    @property
    def input_layout(self) -> str:
        return self.data["input"]["layout"]

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The input's shape without the batch dimension, e.g. (384, 384, 3)."""
        return tuple(int(d) for d in self.data["input"]["shape"][1:])

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.data["data_config"]["input_size"][-2:]
        return int(h), int(w)

    @property
    def data_config(self) -> dict[str, Any]:
        return self.data["data_config"]

    @property
    def output_names(self) -> list[str]:
        return list(self.data["outputs"])

    @property
    def min_batch(self) -> int:
        return int(self.data["batch"]["min"])

    @property
    def opt_batch(self) -> int | None:
        opt = self.data["batch"].get("opt")
        return int(opt) if opt is not None else None

    @property
    def max_batch(self) -> int:
        return int(self.data["batch"]["max"])

    @property
    def num_classes(self) -> int:
        return int(self.data["model"]["num_classes"])

    @property
    def label_set(self) -> str | None:
        return self.data.get("labels")

    @property
    def class_names(self) -> list[str] | None:
        """The artifact's own class names (a fine-tune's), or None: optional, so that artifacts from before
        it and runtimes from before it (which ignore it) work as they did (format 1 either way)."""
        return self.data.get("class_names")

    @property
    def labels(self) -> tuple[str, ...]:
        """The name shown for each class (vitrt.labels.labels_for)."""
        from .labels import labels_for

        return labels_for(self.label_set, self.num_classes, self.class_names)

    @property
    def precision(self) -> str:
        return self.data["precision"]


def _loads(text: str, where: Any) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise MetadataError(f"{os.fspath(where)!r}: vitrt metadata is not valid JSON ({exc}); expected the JSON "
                            f"`make engine` writes. {REBUILD}") from None
