"""Read an ONNX file's ``metadata_props`` without onnx or onnxruntime.

An ONNX file is a protobuf ``ModelProto``; its metadata is field 14 (``StringStringEntryProto``,
key = 1, value = 2). This reader walks the top-level fields and seeks past the others (the graph
alone is 350 MB), so ``vitrt info`` and the runtime's metadata check are instant and the runtime
never imports onnx.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from .errors import ArtifactError

_METADATA_PROPS = 14


def _varint(f: BinaryIO) -> int | None:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            return None if shift == 0 else _truncated()
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ArtifactError("malformed protobuf varint; expected an ONNX ModelProto")


def _truncated() -> int:
    raise ArtifactError("the ONNX file ends in the middle of a field; expected a complete ModelProto")


def _entry(buf: bytes) -> tuple[str, str]:
    key = value = ""
    i = 0
    while i < len(buf):
        tag, i = _varint_bytes(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire != 2:
            raise ArtifactError("malformed metadata entry; expected key/value strings")
        n, i = _varint_bytes(buf, i)
        text = buf[i:i + n].decode("utf-8")
        i += n
        if field == 1:
            key = text
        elif field == 2:
            value = text
    return key, value


def _varint_bytes(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ArtifactError("malformed metadata entry (truncated varint)")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def read_metadata_props(path: str | os.PathLike) -> dict[str, str]:
    """Return the ``metadata_props`` of the ONNX file at ``path`` as a dict."""
    size = os.path.getsize(path)
    props: dict[str, str] = {}
    with open(path, "rb") as f:
        while True:
            tag = _varint(f)
            if tag is None:
                break
            field, wire = tag >> 3, tag & 7
            if field == 0:
                raise ArtifactError("not an ONNX file (protobuf field number 0 at the top level)")
            if wire == 0:
                _varint(f)
            elif wire == 1:
                f.seek(8, os.SEEK_CUR)
            elif wire == 5:
                f.seek(4, os.SEEK_CUR)
            elif wire == 2:
                n = _varint(f)
                if n is None or f.tell() + n > size:
                    _truncated()
                if field == _METADATA_PROPS:
                    k, v = _entry(f.read(n))
                    props[k] = v
                else:
                    f.seek(n, os.SEEK_CUR)
            else:
                raise ArtifactError(f"not an ONNX file (protobuf wire type {wire} at the top level)")
            if f.tell() > size:
                _truncated()
    return props
