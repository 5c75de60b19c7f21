"""PyTorch -> ONNX fp32 with vitrt metadata, checked and verified before it gets its final name."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Callable

from vitrt.errors import BuildError
from vitrt.metadata import FORMAT, ONNX_KEY

from .defaults import MAX_BATCH_ONNX, OPSET
from .graph import ImageModel

def build_metadata(model, data_config: dict, provenance: dict, *, model_name: str, model_kwargs: dict | None,
                   input_format: str, tokens: bool, opset: int, max_batch: int,
                   class_names: list[str] | None = None) -> dict[str, Any]:
    import timm
    import torch

    import vitrt

    h, w = (int(v) for v in data_config["input_size"][-2:])
    if input_format == "uint8":
        inp = {"name": "image", "dtype": "uint8", "layout": "NHWC", "shape": ["N", h, w, 3],
               "normalized_in_graph": True}
    else:
        inp = {"name": "image", "dtype": "float32", "layout": "NCHW", "shape": ["N", 3, h, w],
               "normalized_in_graph": False}
    outputs = {"logits": {"dtype": "float32", "shape": ["N", int(model.num_classes)]},
               "embedding": {"dtype": "float32", "shape": ["N", int(model.num_features)]}}
    if tokens:
        n_tokens = int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 1))
        outputs["tokens"] = {"dtype": "float32", "shape": ["N", n_tokens, int(model.num_features)]}
    return {
        "format": FORMAT,
        "vitrt_version": vitrt.__version__,
        "model": {"name": model_name, "kwargs": model_kwargs or {}, "num_classes": int(model.num_classes),
                  "num_features": int(model.num_features)},
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "labels": "imagenet-1k" if int(model.num_classes) == 1000 and not class_names else None,
        "class_names": class_names,  # a fine-tune's own names (not in the recipe: renaming rebuilds nothing)
        "weights": provenance,
        "precision": "fp32",
        "calibration": None,
        "input": inp,
        "outputs": outputs,
        "batch": {"min": 1, "max": int(max_batch), "dynamic": True},
        "onnx": {"opset": int(opset), "exporter": f"torch.onnx (dynamo) {torch.__version__}"},
        # no build time and no path: the same inputs build the same bytes (a plan keeps its "created")
        "built": {"timm": timm.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def rewrite_metadata(path: str | os.PathLike, metadata: dict) -> None:
    """Replace the vitrt metadata of the ONNX file at ``path``, atomically, without parsing its graph: the
    top-level protobuf fields are copied as they are, but for the ``metadata_props`` entry keyed
    ``vitrt``, which is written anew at the end (field order is free in protobuf)."""
    import json
    import shutil

    from vitrt.atomic import atomic_path
    from vitrt.metadata import Metadata
    from vitrt.onnx_meta import _METADATA_PROPS, _entry, _skip, _varint

    Metadata(metadata, source=os.fspath(path))  # what we write must be readable

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def string_field(field: int, text: str) -> bytes:
        raw = text.encode("utf-8")
        return varint(field << 3 | 2) + varint(len(raw)) + raw

    with open(path, "rb") as src, atomic_path(path) as tmp, open(tmp, "wb") as dst:
        while True:
            start = src.tell()
            tag = _varint(src)
            if tag is None:
                break
            field, wire = tag >> 3, tag & 7
            if field == _METADATA_PROPS and wire == 2:
                body = src.read(_varint(src))
                if _entry(body)[0] == ONNX_KEY:
                    continue  # replaced below
            else:
                _skip(src, wire)
            end = src.tell()
            src.seek(start)
            shutil.copyfileobj(_Limited(src, end - start), dst, 1 << 22)
        entry = string_field(1, ONNX_KEY) + string_field(2, json.dumps(metadata, sort_keys=True))
        dst.write(varint(_METADATA_PROPS << 3 | 2) + varint(len(entry)) + entry)
        dst.flush()
        os.fsync(dst.fileno())


class _Limited:
    """A file object that reads at most ``n`` bytes of ``f`` (for shutil.copyfileobj)."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data


#: Node metadata the dynamo exporter writes that holds the build machine's paths (the Python stack of
#: each op: ``File "/<clone>/.venv/lib/python3.11/site-packages/timm/...", line N``). Dropped, so that
#: an artifact names no directory of the machine that built it and two clones build the same bytes.
#: The module scopes and class names it writes beside it hold no path and are kept.
PATH_METADATA_KEYS = ("pkg.torch.onnx.stack_trace",)


def strip_build_paths(model_proto) -> int:
    """Remove :data:`PATH_METADATA_KEYS` from every node (subgraphs and functions included); returns
    how many entries went."""
    removed = 0

    def graph_nodes(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from graph_nodes(sub)

    nodes = list(graph_nodes(model_proto.graph))
    for fn in model_proto.functions:
        nodes.extend(fn.node)
    for node in nodes:
        for prop in [p for p in node.metadata_props if p.key in PATH_METADATA_KEYS]:
            node.metadata_props.remove(prop)
            removed += 1
    return removed


def set_metadata(model_proto, metadata: dict) -> None:
    import json

    for prop in list(model_proto.metadata_props):
        if prop.key == ONNX_KEY:
            model_proto.metadata_props.remove(prop)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = ONNX_KEY, json.dumps(metadata, sort_keys=True)


def export_onnx(model, out_path: str | os.PathLike, *, model_name: str, provenance: dict,
                model_kwargs: dict | None = None, input_format: str = "uint8", tokens: bool = False,
                opset: int = OPSET, max_batch: int = MAX_BATCH_ONNX, photos=None, verify: bool = True,
                reference: tuple[dict, dict] | None = None, extra_metadata: dict | None = None,
                class_names: list[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Export ``model`` to ``out_path`` (fp32), check it, verify it against PyTorch, then publish it.

    Returns the parity report (also written to ``<out_path>.parity.json``). Raises BuildError, and
    leaves nothing under ``out_path``, when the export, the checker or the verification fails.
    ``reference`` ((inputs, outputs) from :func:`export.gate.reference_outputs`) avoids recomputing
    the PyTorch outputs when the caller has them already; ``extra_metadata`` is merged into the
    artifact's metadata (the build adds the reference file's name).
    """
    import time

    import onnx
    import timm.data
    import torch

    from . import gate
    from .publish import publish

    out_path = Path(out_path)
    if opset < 18:
        raise BuildError(f"opset {opset} requested; expected >= 18 (LayerNormalization as one op)")
    data_config = timm.data.resolve_model_data_config(model)
    size = tuple(int(v) for v in data_config["input_size"][-2:])
    wrapper = ImageModel(model, data_config, input_format=input_format, tokens=tokens).eval()
    metadata = build_metadata(model, data_config, provenance, model_name=model_name, model_kwargs=model_kwargs,
                              input_format=input_format, tokens=tokens, opset=opset, max_batch=max_batch,
                              class_names=class_names)
    metadata.update(extra_metadata or {})
    metadata["gate"] = gate.THRESHOLDS["fp32"]
    metadata["recipe"] = recipe(metadata)
    t0 = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.onnx.export(wrapper, (wrapper.example_input(2, size),), dynamo=True, opset_version=opset,
                                    input_names=["image"], output_names=wrapper.output_names,
                                    dynamic_shapes={"image": {0: batch}}, verbose=False)
    except Exception as exc:
        raise BuildError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from None
    proto = program.model_proto
    strip_build_paths(proto)
    set_metadata(proto, metadata)
    log(f"exported {model_name} to ONNX opset {opset} in {time.perf_counter() - t0:.1f} s "
        f"({len(proto.graph.node)} nodes)")
    del program

    def write(tmp: Path) -> None:
        nonlocal proto
        onnx.save(proto, os.fspath(tmp))
        proto = None
        try:
            onnx.checker.check_model(os.fspath(tmp), full_check=True)
        except Exception as exc:
            raise BuildError(f"onnx.checker rejected the export: {exc}") from None

    def check(tmp: Path) -> dict:
        inputs, outputs = reference or gate.reference_outputs(wrapper, data_config, gate.image_set(photos, size))
        candidate = gate.candidate_outputs(tmp, inputs)
        report = gate.parity_report(outputs, candidate, metadata["gate"], artifact=out_path.name, precision="fp32",
                                    images={s: int(len(x)) for s, x in inputs.items()},
                                    batch_sizes=list(gate.BATCH_SIZES))
        log(gate.format_report(report))
        return report

    return publish(out_path, write, check if verify else None,
                   failure_hint=f"The ONNX export of {model_name} disagrees with PyTorch beyond tolerance.", log=log)


#: Bumped when the exported graph changes for the same model and options, so that an artifact of an
#: older graph is rebuilt: 2 = the uint8 image is cast before the transpose (TensorRT's parser); 3 = no
#: stack traces (the build machine's paths) in node metadata, no build time in the file.
GRAPH_REVISION = 3


def recipe(meta: dict[str, Any]) -> dict[str, Any]:
    """What decides the fp32 artifact's content: equal recipes mean it can be reused."""
    w = meta["weights"]
    return {
        "graph": GRAPH_REVISION, "format": meta["format"], "model": meta["model"]["name"],
        "kwargs": meta["model"].get("kwargs") or {}, "weights": [w.get("source"), w.get("sha256"), w.get("seed")],
        "input": [meta["input"]["dtype"], meta["input"]["layout"]], "outputs": sorted(meta["outputs"]),
        "max_batch": meta["batch"]["max"], "precision": meta["precision"], "opset": meta["onnx"]["opset"],
    }
