"""Precision variants of the fp32 ONNX graph, made with NVIDIA TensorRT Model Optimizer (ModelOpt).

- fp16: AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``). It runs the graph on a few
  calibration images and keeps in FP32 every node whose inputs or outputs exceed ``data_max`` (512)
  or whose initializers do not fit FP16; everything else becomes FP16. LayerNormalization keeps
  ``stash_type=1``: its mean and variance are computed in FP32 even with FP16 inputs.
- int8 / fp8 for TensorRT: explicit QuantizeLinear/DequantizeLinear (``modelopt.onnx.quantization.quantize``),
  symmetric, per-channel weights, calibrated on CALIB_DIR, in one of the :data:`RECIPES`. The default,
  "accurate", puts Q/DQ on the 48 Linear MatMuls only and FP16 everywhere else (LayerNorm with FP32
  statistics); attention stays FP16 without Q/DQ, the form TensorRT runs as one fused MHA kernel.
  "smooth" adds SmoothQuant's scale migration before int8 calibration (export/smooth.py). "fp32" is the
  2026-12-01 recipe (FP32 around the int8 layers: slower on a GPU than the fp16 plan,
  export/plan_estimate.py), "fast" the one before (ModelOpt's own placement, which adds the LayerNorms'
  residual inputs and the Conv).
- int8-cpu, for CPUs (:data:`CPU_RECIPES`): NNCF's INT8 on the ONNX graph by default
  (export/nncf_quantize.py, "nncf"), OpenVINO's own recipe for transformers; ModelOpt's int8 Q/DQ on
  the Linear MatMuls with FP32 around them ("modelopt", "smooth") and ONNX Runtime's own static quantizer
  with int8 attention (export/ort_quantize.py, "ort", the recipe before 2026-12-03) stay opt-in.

docs/precision.md has the measurements, one change at a time, behind each recipe, on random-init seeds
and on the real-weights model (WEIGHTS=dinov2). The graph's I/O keeps the artifact contract (uint8
image in, float32 out). ModelOpt rewrites its input file in place, so it always gets a copy.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitrt.errors import BuildError

from . import defaults as D

PRECISIONS = ("fp16", "int8", "fp8", "int8-cpu")
#: The variant made for ONNX Runtime's CPU provider rather than for TensorRT (no plan is built from
#: it; export/ort_quantize.py makes it).
CPU_PRECISIONS = ("int8-cpu",)
CALIBRATION_METHODS = ("max", "entropy")
#: ``--calib-method auto`` (the default): ModelOpt's own default per precision. On the real-weights model,
#: int8 after SmoothQuant: entropy photos worst 0.9943 / mean 0.9972, max 0.9833 / 0.9946 (the trained
#: activations' tails: max spends the 8 bits on them); with FP32 around, entropy lifts the 2026-12-01
#: recipe's 0.9881 too; fp8 keeps max (E4M3's range covers the tails).
AUTO_CALIBRATION = {"int8": "entropy", "int8-cpu": "entropy", "fp8": "max"}


def check_cpu_recipe(cpu_recipe: str, method: str = "auto", op_types: list[str] | None = None,
                     quantize_attention: bool = False) -> None:
    """BuildError unless ``cpu_recipe`` is one and takes the options given (the build calls this before
    any heavy work, so a wrong combination fails at once rather than after the other variants)."""
    if cpu_recipe not in CPU_RECIPES:
        raise BuildError(f"int8-cpu recipe {cpu_recipe!r}; expected one of {', '.join(CPU_RECIPES)}")
    calibration_method("int8-cpu", method, cpu_recipe)
    if cpu_recipe == "nncf" and (op_types or quantize_attention):
        given = "--quantize-op-types" if op_types else "--quantize-attention"
        raise BuildError(f"{given} with int8-cpu recipe 'nncf', which chooses what to quantize itself (NNCF's "
                         "transformer recipe); expected --cpu-recipe modelopt (or ort) for that option")


def calibration_method(precision: str, method: str = "auto", cpu_recipe: str | None = None) -> str | None:
    """The method ``precision`` calibrates with (None: fp16); an int8-cpu recipe run by another tool
    calibrates its own way (CPU_RECIPES "calibration"), and a method asked of it is an error."""
    if precision == "fp16":
        return None
    own = CPU_RECIPES.get(cpu_recipe or "", {}).get("calibration") if precision in CPU_PRECISIONS else None
    if own is not None:
        if method != "auto":
            raise BuildError(f"--calib-method {method} with int8-cpu recipe {cpu_recipe!r}, which calibrates its own "
                             f"way ({own}); expected auto, or --cpu-recipe modelopt")
        return own
    if method == "auto":
        return AUTO_CALIBRATION[precision]
    if method not in CALIBRATION_METHODS:
        raise BuildError(f"calibration method {method!r}; expected auto or one of {CALIBRATION_METHODS}")
    return method
#: Bumped when the pass that makes a variant changes its graph for the same inputs, so that a variant
#: made by an older vitrt is rebuilt rather than reused (as GRAPH_REVISION does for the fp32 graph):
#: int8-cpu 2 = int8 attention in OpenVINO's layout and float outputs, 3 = GELU reads the float
#: MatMul output (export/ort_quantize.py).
VARIANT_REVISION = {"fp16": 1, "int8": 3, "fp8": 3, "int8-cpu": 4}  # int8/fp8 3, int8-cpu 4: the real-weights recipes
#: The int8/fp8 recipes for TensorRT: the op types ModelOpt quantizes (None: its own choice), the precision
#: of everything else, and the SmoothQuant strength per precision (None: no migration). Measured on the
#: real-weights model (WEIGHTS=dinov2) and on random-init ViT-B seeds (docs/precision.md, "INT8 and FP8
#: on real weights"), photos worst / mean:
#: - accurate: real weights int8 0.9928 / 0.9963, fp8 0.9957 / 0.9969; ViT-B seed 0 int8 0.9963 / 0.9978.
#:   FP16 around, so faster than the fp16 plan by TensorRT's rules (export/plan_estimate.py).
#: - smooth: real weights int8 0.9943 / 0.9972, but ViT-B seeds 0.9877-0.9898 / 0.9947-0.9955, under the
#:   gate: the migration helps a model with outlier channels and costs one without. Opt-in. fp8 is never
#:   migrated (it cost fp8 0.003 at the worst photo: E4M3 has the range the migration buys int8).
#: - fp32 (the recipe of 2026-12-01): real weights int8 0.9881 / 0.9942 (max calibration); FP32 attention
#:   and LayerNorm make it about 3x slower than the fp16 plan on a GPU by the same estimate.
#: - fast (the one before): ModelOpt's placement, which also quantizes the LayerNorms' residual inputs
#:   and the patch Conv: real weights int8 0.58 / 0.78.
RECIPES = {"accurate": {"op_types": ["MatMul"], "high_precision_dtype": "fp16", "smooth": None},
           "smooth": {"op_types": ["MatMul"], "high_precision_dtype": "fp16", "smooth": {"int8": 0.5, "fp8": None}},
           "fp32": {"op_types": ["MatMul"], "high_precision_dtype": "fp32", "smooth": None},
           "fast": {"op_types": None, "high_precision_dtype": "fp16", "smooth": None}}
#: A layer is migrated only where its input has an outlier channel: the largest channel max at least
#: this many times the median one. The real-weights model has 4 such layers of 48 (one proj, one fc1, two
#: fc2: ratios 9-21), random-init ViT-B none (ratios under 3), so the migration moves what needs moving and
#: leaves a model without outliers as it was (migrating every layer cost ViT-B seeds 0.9877 worst photo).
SMOOTH_MIN_RATIO = 8.0
#: int8-cpu's recipes (docs/precision.md, "INT8 and FP8 on real weights", has each measured), photos
#: worst / mean on the real-weights model (ONNX Runtime; OpenVINO, which the fleet serves on a VNNI CPU),
#: and on random-init ViT-B seed 0:
#: - nncf (the default): NNCF's INT8 on the ONNX graph, min/max activation ranges, no SmoothQuant
#:   (export/nncf_quantize.py): real 0.9970 / 0.9985, OpenVINO 0.9978 / 0.9987 (NNCF's own recipe on
#:   OpenVINO's IR, the make bench peer: 0.9912 / 0.9977, at the same speed); ViT-B 0.9993 / 0.9995.
#: - modelopt: ModelOpt's int8 on the Linear MatMuls, FP32 around them, attention FP32, after SmoothQuant
#:   on the layers with an outlier channel (SMOOTH_MIN_RATIO): real 0.9933 / 0.9963, OpenVINO 0.9925 /
#:   0.9963 (without the migration 0.9862 there, under the gate), ViT-B 0.9961 / 0.9978; on OpenVINO about
#:   1.1x slower than nncf (its attention stays FP32).
#: - smooth: the same with every layer migrated: real 0.9956 / 0.9974, ViT-B seeds under the gate (0.9877).
#: - ort: ONNX Runtime's own quantizer with int8 attention (export/ort_quantize.py): real 0.88 / 0.95, its
#:   uint8 softmax probabilities (steps of 1/255) the main cost.
CPU_RECIPES = {"nncf": {"tool": "nncf", "module": "export.nncf_quantize", "calibration": "nncf"},
               "modelopt": {"op_types": ["MatMul"], "high_precision_dtype": "fp32", "smooth": {"int8": 0.5},
                            "smooth_min_ratio": SMOOTH_MIN_RATIO},
               "smooth": {"op_types": ["MatMul"], "high_precision_dtype": "fp32", "smooth": {"int8": 0.5}},
               "ort": {"tool": "onnxruntime", "module": "export.ort_quantize", "calibration": "minmax"}}
#: At most this many calibration images measure the channel ranges SmoothQuant migrates (a max over
#: every token of each image; more images move it little and cost a pass each).
SMOOTH_IMAGES = 64
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


def _smooth(src: Path, calib: np.ndarray, alpha: float | None, min_ratio: float = 0.0) -> dict | None:
    """SmoothQuant's migration on the fp32 copy at ``src`` (in place), before calibration; only layers
    whose input's largest channel max is ``min_ratio`` times its median or more (0: every layer)."""
    if alpha is None:
        return None
    import onnx

    from .smooth import migrate

    model = onnx.load(os.fspath(src))
    done = migrate(model, calib[:SMOOTH_IMAGES], alpha=alpha, min_ratio=min_ratio)
    onnx.save(model, os.fspath(src))
    return {**done, "min_ratio": min_ratio, "images": int(min(len(calib), SMOOTH_IMAGES))}


def _quantize(mode: str, src: Path, calib: np.ndarray, workdir: Path, method: str, op_types: list[str] | None,
              quantize_attention: bool, eps: list[str], recipe: str = "accurate", table: dict | None = None):
    from modelopt.onnx.quantization import quantize

    table = table or RECIPES
    if recipe not in table:
        raise BuildError(f"quantization recipe {recipe!r}; expected one of {', '.join(table)}")
    spec = table[recipe]
    out = workdir / f"{mode}.onnx"
    smooth = _smooth(src, calib, (spec.get("smooth") or {}).get(mode), spec.get("smooth_min_ratio", 0.0))
    reader = _ProgressReader(calib, "image", f"calibrating {mode} ({method}, {recipe})")
    op_types = op_types or spec["op_types"]
    high = spec["high_precision_dtype"]
    kwargs: dict[str, Any] = {}
    if op_types:
        kwargs["op_types_to_quantize"] = op_types
    quantize(os.fspath(src), quantize_mode=mode, calibration_data_reader=reader, calibration_method=method,
             calibration_eps=eps, output_path=os.fspath(out), high_precision_dtype=high,
             disable_mha_qdq=not quantize_attention, log_level="WARNING", **kwargs)
    import onnx

    options = {"tool": "modelopt.onnx.quantization.quantize", "recipe": recipe, "quantize_mode": mode,
               "calibration_method": method, "high_precision_dtype": high, "disable_mha_qdq": not quantize_attention,
               "op_types_to_quantize": op_types, "calibration_eps": eps, "smoothquant": smooth}
    return onnx.load(os.fspath(out)), options


def _quantize_cpu(src: Path, calib: np.ndarray, workdir: Path, op_types: list[str] | None, fuse: bool,
                  module: str = "export.ort_quantize"):
    """int8-cpu by another tool, in a fresh interpreter: ModelOpt patches ONNX Runtime's quantizer when it
    is imported (modelopt/onnx/quantization/ort_patching.py), and ORT's own static quantization then fails
    in the same process. ``module`` (export/ort_quantize.py, export/nncf_quantize.py) is what runs there."""
    import json
    import subprocess
    import sys

    import onnx

    np.save(workdir / "calib.npy", calib)
    out, info = workdir / "int8_cpu.onnx", workdir / "int8_cpu.json"
    opts = {"op_types": op_types, "fuse": fuse} if module == "export.ort_quantize" else {}
    cmd = [sys.executable, "-m", module, os.fspath(src), os.fspath(out), os.fspath(workdir / "calib.npy"),
           os.fspath(info), json.dumps(opts)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # progress bars; errors go to stderr
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stdout or "").strip().splitlines()[-15:])
        raise BuildError(f"{module} failed to make int8-cpu (exit {proc.returncode}); its traceback is above"
                         + (f"; the end of its output:\n{tail}" if tail else ""))
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
                 calib_provenance: dict | None, *, method: str = "auto", keep_fp32_ops: list[str] | None = None,
                 op_types: list[str] | None = None, quantize_attention: bool = False, eps: list[str] | None = None,
                 recipe: dict | None = None, extra_metadata: dict | None = None, quant_recipe: str = "accurate",
                 cpu_recipe: str = D.CPU_RECIPE, workdir: str | os.PathLike | None = None,
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
    method = calibration_method(precision, method, cpu_recipe) or method
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
                check_cpu_recipe(cpu_recipe, "auto", op_types, quantize_attention)
            if precision in CPU_PRECISIONS and "module" in CPU_RECIPES[cpu_recipe]:
                model, options = _quantize_cpu(src, calib, workdir, op_types, fuse=True,
                                               module=CPU_RECIPES[cpu_recipe]["module"])
            elif precision in CPU_PRECISIONS:
                model, options = _quantize("int8", src, calib, workdir, method, op_types, quantize_attention,
                                           list(eps or ["cpu"]), cpu_recipe, CPU_RECIPES)
            elif precision == "fp16":
                model, options = _fp16(src, calib, workdir, list(keep_fp32_ops or []))
            else:
                model, options = _quantize(precision, src, calib, workdir, method, op_types, quantize_attention,
                                           list(eps or ["cpu"]), quant_recipe)
        except BuildError:
            raise
        except Exception as exc:
            tool = CPU_RECIPES[cpu_recipe].get("tool", "ModelOpt") if precision in CPU_PRECISIONS else "ModelOpt"
            raise BuildError(f"{tool} failed to make the {precision} variant: {type(exc).__name__}: {exc}") from None
    summary = summarize(model)
    want = {metadata["input"]["name"]: metadata["input"]["dtype"].upper().replace("FLOAT32", "FLOAT"),
            **{k: "FLOAT" for k in metadata["outputs"]}}
    if summary["io_types"] != want:
        raise BuildError(f"the {precision} pass changed the graph's I/O types to {summary['io_types']}; "
                         f"expected {want} (the artifact contract)")
    from vitrt.metadata import sha256_file

    meta = dict(metadata)
    meta["precision"] = precision
    meta["precision_pass"] = {**options, **summary}  # no time taken: the same inputs build the same bytes
    meta["calibration"] = {**(calib_provenance or {}), "method": method if precision != "fp16" else None,
                           "used": int(len(calib)),
                           "use": "AutoCast FP16 range check" if precision == "fp16" else f"{precision} Q/DQ ranges"}
    source_sha = (recipe or {}).get("source_sha256") or sha256_file(fp32_path)  # the caller has usually hashed it
    meta["source_onnx"] = {"file": fp32_path.name, "sha256": source_sha}
    meta["onnx"] = {**metadata.get("onnx", {}), "opset": summary["opset"]}
    meta["recipe"] = recipe
    if precision not in CPU_PRECISIONS:  # what a plan of it should gain over the fp16 plan, by TensorRT's rules
        from .plan_estimate import record

        try:
            meta["plan_estimate"] = record(model)
        except Exception as exc:  # a graph the estimate cannot read: no estimate, so the fleet keeps fp16 first
            meta["plan_estimate"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{precision}: no plan estimate ({type(exc).__name__}: {exc}); the fleet will rank its plan after fp16")
    meta.update(extra_metadata or {})
    set_metadata(model, meta)
    log(f"{precision}: {summary['qdq_pairs']} Q/DQ pairs on {summary['quantized_ops'] or 'no ops'}, "
        f"{summary['casts']} casts, opset {summary['opset']} ({time.perf_counter() - t0:.0f} s)")
    return model, meta
