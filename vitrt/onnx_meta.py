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

_GRAPH, _OPSET_IMPORT, _METADATA_PROPS = 7, 8, 14


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
        try:
            text = buf[i:i + n].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"a metadata entry is not UTF-8 ({exc.reason} at byte {exc.start}); expected "
                                "the UTF-8 JSON vitrt writes") from None
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


def _skip(f: BinaryIO, wire: int) -> None:
    if wire == 0:
        _varint(f)
    elif wire == 1:
        f.seek(8, os.SEEK_CUR)
    elif wire == 5:
        f.seek(4, os.SEEK_CUR)
    elif wire == 2:
        f.seek(_varint(f) or 0, os.SEEK_CUR)
    else:
        raise ArtifactError(f"not an ONNX file (protobuf wire type {wire}); expected an ONNX ModelProto")


def read_metadata_props(path: str | os.PathLike) -> dict[str, str]:
    """Return the ``metadata_props`` of the ONNX file at ``path`` as a dict. A file that ends at a
    field boundary before its graph or opset is reported as truncated (an ONNX writer puts them first)."""
    size = os.path.getsize(path)
    props: dict[str, str] = {}
    seen: set[int] = set()
    with open(path, "rb") as f:
        while True:
            tag = _varint(f)
            if tag is None:
                break
            field, wire = tag >> 3, tag & 7
            if field == 0:
                raise ArtifactError("not an ONNX file (protobuf field number 0 at the top level); expected an ONNX ModelProto")
            if wire == 2:
                n = _varint(f)
                if n is None or f.tell() + n > size:
                    _truncated()
                if field == _METADATA_PROPS:
                    k, v = _entry(f.read(n))
                    props[k] = v
                else:
                    f.seek(n, os.SEEK_CUR)
            else:
                _skip(f, wire)
            if f.tell() > size:
                _truncated()
            seen.add(field)
    if not {_GRAPH, _OPSET_IMPORT} <= seen:
        lacks = " and ".join(n for n, k in (("graph", _GRAPH), ("opset_import", _OPSET_IMPORT)) if k not in seen)
        raise ArtifactError(f"the file has no {lacks} ({size} bytes): truncated, or not an ONNX model; expected "
                            "a complete ModelProto")
    return props


# --- what the graph itself says about precision -------------------------------------------------------
_NODE, _INITIALIZER = 1, 5  # GraphProto fields
_OP_TYPE = 4  # NodeProto field
_DATA_TYPE = 2  # TensorProto field
_FLOAT16, _FP8_TYPES = 10, {17, 18, 19, 20}
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear",
              "MatMulIntegerToFloat"}


def _scan(f: BinaryIO, end: int, want: dict[int, str]) -> dict[int, object]:
    """Fields ``want`` (number -> "varint" or "bytes") of the message ending at ``end``; the rest skipped."""
    found: dict[int, object] = {}
    while f.tell() < end:
        tag = _varint(f)
        if tag is None:
            _truncated()
        field, wire = tag >> 3, tag & 7
        if field in want and want[field] == "varint" and wire == 0:
            found[field] = _varint(f)
        elif field in want and want[field] == "bytes" and wire == 2:
            n = _varint(f) or 0
            found[field] = f.read(n)
        else:
            _skip(f, wire)
    return found


def graph_precision(path: str | os.PathLike) -> str:
    """fp32, fp16, int8 or fp8, from the graph's ops and initializer types (not from its metadata):
    FP8 initializers (Q/DQ zero points) -> fp8; quantize/dequantize or integer MatMul ops -> int8;
    FP16 initializers -> fp16; else fp32. Reads node headers and initializer types, seeks past data."""
    ops: set[str] = set()
    types: set[int] = set()
    with open(path, "rb") as f:
        size = os.path.getsize(path)
        while f.tell() < size:
            tag = _varint(f)
            if tag is None:
                break
            field, wire = tag >> 3, tag & 7
            if field != _GRAPH or wire != 2:
                _skip(f, wire)
                continue
            n = _varint(f) or 0
            graph_end = f.tell() + n
            while f.tell() < graph_end:
                tag = _varint(f)
                if tag is None:
                    _truncated()
                gfield, gwire = tag >> 3, tag & 7
                if gwire == 2 and gfield in (_NODE, _INITIALIZER):
                    n = _varint(f) or 0
                    end = f.tell() + n
                    if gfield == _NODE:
                        op = _scan(f, end, {_OP_TYPE: "bytes"}).get(_OP_TYPE)
                        if op:
                            ops.add(op.decode("utf-8", "replace"))
                    else:
                        dtype = _scan(f, end, {_DATA_TYPE: "varint"}).get(_DATA_TYPE)
                        if dtype is not None:
                            types.add(int(dtype))
                    f.seek(end)
                else:
                    _skip(f, gwire)
    if types & _FP8_TYPES:
        return "fp8"
    if ops & _QUANT_OPS:
        return "int8"
    if _FLOAT16 in types:
        return "fp16"
    return "fp32"
