"""Precision variants of the fp32 ONNX graph, made with NVIDIA TensorRT Model Optimizer (ModelOpt).

- fp16: AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``). It runs the graph on a few
  calibration images and keeps in FP32 every node whose inputs or outputs exceed ``data_max`` (512)
  or whose initializers do not fit FP16; everything else becomes FP16. LayerNormalization keeps
  ``stash_type=1``: its mean and variance are computed in FP32 even with FP16 inputs.
- int8 / fp8: explicit QuantizeLinear/DequantizeLinear (``modelopt.onnx.quantization.quantize``),
  symmetric, per-channel weights, calibrated on CALIB_DIR, in one of two :data:`RECIPES`: "accurate"
  (the default: Q/DQ on the 48 Linear MatMuls only, FP32 for the rest) or "fast" (the earlier one:
  ModelOpt's own placement, which adds the LayerNorms' residual inputs and the patch Conv, FP16 for the
  rest). The attention matrix multiplications are not quantized (``disable_mha_qdq``): TensorRT has no
  INT8 fused attention for 577 tokens, and quantizing them costs accuracy. docs/precision.md has the
  measurements, one change at a time, behind the recipes.

The graph's I/O keeps the artifact contract (uint8 image in, float32 out). ModelOpt rewrites its input
file in place, so it always gets a copy of the fp32 artifact.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitrt.errors import BuildError

PRECISIONS = ("fp16", "int8", "fp8", "int8-cpu")
#: The variant made for ONNX Runtime's CPU provider rather than for TensorRT (no plan is built from
#: it; export/ort_quantize.py makes it).
CPU_PRECISIONS = ("int8-cpu",)
CALIBRATION_METHODS = ("max", "entropy")
#: Bumped when the pass that makes a variant changes its graph for the same inputs, so that a variant
#: made by an older vitrt is rebuilt rather than reused (as GRAPH_REVISION does for the fp32 graph):
#: int8-cpu 2 = int8 attention in OpenVINO's layout and float outputs, 3 = GELU reads the float
#: MatMul output (export/ort_quantize.py).
VARIANT_REVISION = {"fp16": 1, "int8": 2, "fp8": 2, "int8-cpu": 3}  # int8/fp8 2: the recipes
#: The int8/fp8 recipes for TensorRT: the op types ModelOpt quantizes (None: its own choice) and the
#: precision of everything else. Measured on the seed-99 ViT-B/16-384 (docs/precision.md): ModelOpt's
#: placement with FP16 gave int8 photos worst cosine 0.987; Linear MatMuls only, 0.995; and FP32 for the
#: rest, 0.9985: every single op type kept in FP32 alone (LayerNorm, the residual Add, the attention
#: MatMuls and Softmax, all elementwise ops) recovered at most 0.001 of it.
RECIPES = {"accurate": {"op_types": ["MatMul"], "high_precision_dtype": "fp32"},
           "fast": {"op_types": None, "high_precision_dtype": "fp16"}}
#: Images AutoCast runs to find FP16 range overflows. It keeps every intermediate tensor of every
#: image: measured peak 5.6 GB with 1 image, 9.8 GB with 2, 14.0 GB with 4 for ViT-B/16-384. One image
#: is the default: the flag threshold (512) is 128x below FP16's limit (65504), so an activation that
#: stays under it on one photo and overflows on another is implausible. More with --fp16-range-images.
FP16_RANGE_IMAGES = 1


class _ProgressReader:
    """ORT CalibrationDataReader over a uint8 batch, one image per step, with a tqdm bar."""

    def __init__(self, images: np.ndarray, input_name: str, desc: str):
        from tqdm import tqdm

        self.items = [{input_name: images[i:i + 1]} for i in range(len(images))]
        self._tqdm = tqdm
        self.desc = desc
        self.rewind()

    def get_next(self):
        item = next(self._it, None)
        if item is not None:
            self._bar.update(1)
        else:
            self._bar.close()
        return item

    def get_first(self):
        return self.items[0]

    def rewind(self):
        self._it = iter(self.items)
        self._bar = self._tqdm(total=len(self.items), desc=self.desc, unit="img", leave=False)

    def __len__(self):
        return len(self.items)


def _fp16(src: Path, calib: np.ndarray, workdir: Path, keep_fp32_ops: list[str]):
    """AutoCast over ``calib`` (all of it: the caller chooses how many images)."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    npz = workdir / "autocast_inputs.npz"
    np.savez(npz, image=calib)
    model = convert_to_mixed_precision(os.fspath(src), low_precision_type="fp16", keep_io_types=True,
                                       calibration_data=os.fspath(npz), op_types_to_exclude=keep_fp32_ops or None,
                                       data_max=512)
    options = {"tool": "modelopt.onnx.autocast.convert_to_mixed_precision", "data_max": 512,
               "keep_fp32_ops": keep_fp32_ops, "range_images": int(len(calib)),
               "keep_io_types": True}
    return model, options


def _quantize(mode: str, src: Path, calib: np.ndarray, workdir: Path, method: str, op_types: list[str] | None,
              quantize_attention: bool, eps: list[str], recipe: str = "accurate"):
    from modelopt.onnx.quantization import quantize

    if recipe not in RECIPES:
        raise BuildError(f"quantization recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    out = workdir / f"{mode}.onnx"
    reader = _ProgressReader(calib, "image", f"calibrating {mode} ({method}, {recipe})")
    op_types = op_types or RECIPES[recipe]["op_types"]
    high = RECIPES[recipe]["high_precision_dtype"]
    kwargs: dict[str, Any] = {}
    if op_types:
        kwargs["op_types_to_quantize"] = op_types
    quantize(os.fspath(src), quantize_mode=mode, calibration_data_reader=reader, calibration_method=method,
             calibration_eps=eps, output_path=os.fspath(out), high_precision_dtype=high,
             disable_mha_qdq=not quantize_attention, log_level="WARNING", **kwargs)
    import onnx

    options = {"tool": "modelopt.onnx.quantization.quantize", "recipe": recipe, "quantize_mode": mode,
               "calibration_method": method, "high_precision_dtype": high, "disable_mha_qdq": not quantize_attention,
               "op_types_to_quantize": op_types, "calibration_eps": eps}
    return onnx.load(os.fspath(out)), options


def _quantize_cpu(src: Path, calib: np.ndarray, workdir: Path, op_types: list[str] | None, fuse: bool):
    """int8-cpu, in a fresh interpreter: ModelOpt patches ONNX Runtime's quantizer when it is imported
    (modelopt/onnx/quantization/ort_patching.py), and ORT's own static quantization then fails in the
    same process. See export/ort_quantize.py for what runs there."""
    import json
    import subprocess
    import sys

    import onnx

    np.save(workdir / "calib.npy", calib)
    out, info = workdir / "int8_cpu.onnx", workdir / "int8_cpu.json"
    cmd = [sys.executable, "-m", "export.ort_quantize", os.fspath(src), os.fspath(out), os.fspath(workdir / "calib.npy"),
           os.fspath(info), json.dumps({"op_types": op_types, "fuse": fuse})]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise BuildError(f"ONNX Runtime's quantizer failed (exit {proc.returncode}); see its messages above")
    return onnx.load(os.fspath(out)), json.loads(info.read_text())


def summarize(model) -> dict[str, Any]:
    """What the precision pass did: Q/DQ pairs, quantized op types, node dtypes, I/O types."""
    import onnx

    producers = {o: n for n in model.graph.node for o in n.output}
    quantized = Counter()
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm", "Conv") and any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input):
            quantized[n.op_type] += 1
    ops = Counter(n.op_type for n in model.graph.node)
    io = {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
          for v in list(model.graph.input) + list(model.graph.output)}
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"qdq_pairs": ops.get("QuantizeLinear", 0), "quantized_ops": dict(quantized), "casts": ops.get("Cast", 0),
            "io_types": io, "opset": opset}


def make_variant(precision: str, fp32_path: Path, metadata: dict, calib: np.ndarray | None,
                 calib_provenance: dict | None, *, method: str = "max", keep_fp32_ops: list[str] | None = None,
                 op_types: list[str] | None = None, quantize_attention: bool = False, eps: list[str] | None = None,
                 recipe: dict | None = None, extra_metadata: dict | None = None, quant_recipe: str = "accurate",
                 workdir: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print):
    """Make the ``precision`` variant of ``fp32_path``; returns (ModelProto with metadata, metadata).

    ``op_types`` and ``quantize_attention`` override ModelOpt's choice of what to quantize (for
    experiments and for testing the parity gate on a deliberately over-quantized graph). ModelOpt's
    scratch files go to a folder under ``workdir`` (default: the fp32 file's folder) that this call
    owns and removes; one left by a killed build is removed by the next (vitrt.atomic)."""
    import time

    from .onnx_export import set_metadata

    if precision not in PRECISIONS:
        raise BuildError(f"precision {precision!r}; expected one of {PRECISIONS}")
    if precision in ("int8", "fp8") and method not in CALIBRATION_METHODS:
        raise BuildError(f"calibration method {method!r}; expected one of {CALIBRATION_METHODS}")
    if calib is None or len(calib) == 0:
        raise BuildError(f"{precision} needs calibration images")
    t0 = time.perf_counter()
    from vitrt.atomic import scratch_dir

    from . import publish as _publish

    with scratch_dir(Path(workdir) if workdir is not None else fp32_path.parent, f"{precision}") as tmp:
        workdir = Path(tmp)
        src = workdir / "fp32_copy.onnx"  # ModelOpt rewrites its input in place
        shutil.copyfile(fp32_path, src)
        _publish.on_event("scratch", workdir)
        try:
            if precision in CPU_PRECISIONS:
                model, options = _quantize_cpu(src, calib, workdir, op_types, fuse=True)
            elif precision == "fp16":
                model, options = _fp16(src, calib, workdir, list(keep_fp32_ops or []))
            else:
                model, options = _quantize(precision, src, calib, workdir, method, op_types, quantize_attention,
                                           list(eps or ["cpu"]), quant_recipe)
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(f"ModelOpt failed to make the {precision} variant: {type(exc).__name__}: {exc}") from None
    summary = summarize(model)
    want = {metadata["input"]["name"]: metadata["input"]["dtype"].upper().replace("FLOAT32", "FLOAT"),
            **{k: "FLOAT" for k in metadata["outputs"]}}
    if summary["io_types"] != want:
        raise BuildError(f"the {precision} pass changed the graph's I/O types to {summary['io_types']}; "
                         f"expected {want} (the artifact contract)")
    from vitrt.metadata import sha256_file

    meta = dict(metadata)
    meta["precision"] = precision
    meta["precision_pass"] = {**options, **summary, "seconds": round(time.perf_counter() - t0, 1)}
    method = "minmax" if precision in CPU_PRECISIONS else method
    meta["calibration"] = {**(calib_provenance or {}), "method": method if precision != "fp16" else None,
                           "used": int(len(calib)),
                           "use": "AutoCast FP16 range check" if precision == "fp16" else f"{precision} Q/DQ ranges"}
    source_sha = (recipe or {}).get("source_sha256") or sha256_file(fp32_path)  # the caller has usually hashed it
    meta["source_onnx"] = {"file": fp32_path.name, "sha256": source_sha}
    meta["onnx"] = {**metadata.get("onnx", {}), "opset": summary["opset"]}
    meta["recipe"] = recipe
    meta.update(extra_metadata or {})
    set_metadata(model, meta)
    log(f"{precision}: {summary['qdq_pairs']} Q/DQ pairs on {summary['quantized_ops'] or 'no ops'}, "
        f"{summary['casts']} casts, opset {summary['opset']} ({time.perf_counter() - t0:.0f} s)")
    return model, meta
