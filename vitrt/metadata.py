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

from .errors import MetadataError

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


class Metadata:
    """A validated view of an artifact's metadata dict."""

    def __init__(self, data: dict[str, Any], source: str = "artifact"):
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: metadata is a {type(data).__name__}; expected a JSON object")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise MetadataError(f"{source}: metadata lacks {missing}; expected the keys {list(REQUIRED)}. "
                                "Rebuild the artifact with `make engine`.")
        if data["format"] != FORMAT:
            raise MetadataError(f"{source}: metadata format {data['format']!r}; this vitrt reads format {FORMAT}. "
                                "Rebuild the artifact with `make engine`.")
        self.data = data
        self.source = source

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, path: str | os.PathLike) -> "Metadata":
        from .onnx_meta import read_metadata_props

        props = read_metadata_props(path)
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
        return cls(_loads(p.read_text("utf-8"), p), source=os.fspath(p))

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
    def max_batch(self) -> int:
        return int(self.data["batch"]["max"])

    @property
    def num_classes(self) -> int:
        return int(self.data["model"]["num_classes"])

    @property
    def label_set(self) -> str | None:
        return self.data.get("labels")

    @property
    def precision(self) -> str:
        return self.data["precision"]


def _loads(text: str, where: Any) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise MetadataError(f"{os.fspath(where)!r}: vitrt metadata is not valid JSON ({exc})") from None
