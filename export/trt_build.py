"""ONNX -> TensorRT plan (strongly typed, one batch profile, timing cache) + ``.plan.json`` sidecar.

Precision comes from the ONNX graph (DESIGN.md): the network is strongly typed, no precision
builder flag is ever set, so TensorRT builds exactly the types the graph has or fails; it never
downgrades silently. Every TensorRT name used is listed in vitrt/trt_api.py with its source.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Callable

from vitrt.errors import BuildError
from vitrt.metadata import Metadata, sha256_file

from .atomic import atomic_path, write_bytes, write_json

#: Serving defaults. Batch 1 is what a single request needs; 8 is where TensorRT tunes its kernels
#: (the middle of what dynamic batching forms under load); 32 bounds the memory held for activations
#: (about 0.8 GB of scratch for ViT-B/16-384 in FP16) and is past the point where an H100's
#: throughput stops growing for this 49-GMAC model.
MIN_BATCH, OPT_BATCH, MAX_BATCH = 1, 8, 32
WORKSPACE_GIB = 4
OPT_LEVEL = 3  # TensorRT's default; 5 searches longer for a few percent
#: Oldest compute capability whose tensor cores run each precision in TensorRT.
MIN_COMPUTE = {"fp32": (0, 0), "fp16": (7, 0), "int8": (7, 5), "fp8": (8, 9)}


def have_tensorrt() -> str | None:
    """Why a plan cannot be built here, or None when it can."""
    from vitrt.gpu import gpu_count

    if gpu_count() == 0:
        return "no NVIDIA GPU found (cudaGetDeviceCount reports none)"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT's Python package is not installed (make engine installs it where nvidia-smi works)"
    if not hasattr(tensorrt, "Builder"):
        return "the installed TensorRT has no Builder (a runtime-only package)"
    return None


def network_flags(trt) -> int:
    """STRONGLY_TYPED on TensorRT 10; on 11 networks are always strongly typed and the flag is deprecated."""
    major = int(trt.__version__.split(".")[0])
    if major >= 11:
        return 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise BuildError(f"TensorRT {trt.__version__} has no strongly typed networks; expected TensorRT >= 10")
    return 1 << int(flag)


def plan_path_for(onnx_path: Path, precision: str) -> Path:
    """The plan's name: FP16 is the default plan (b16_384.plan); others say their precision
    (b16_384_int8.plan, b16_384_fp8.plan, b16_384_fp32.plan)."""
    stem = onnx_path.stem
    for p in ("_fp16", "_int8", "_fp8"):
        stem = stem[: -len(p)] if stem.endswith(p) else stem
    return onnx_path.with_name(stem + ("" if precision == "fp16" else f"_{precision}") + ".plan")


def build_plan(onnx_path: Path, plan_path: Path, *, device: int = 0, min_batch: int = MIN_BATCH,
               opt_batch: int = OPT_BATCH, max_batch: int = MAX_BATCH, workspace_gib: float = WORKSPACE_GIB,
               opt_level: int = OPT_LEVEL, timing_cache: Path | None = None,
               verify: Callable[[Path], None] | None = None, log: Callable[[str], None] = print) -> Path:
    """Build ``plan_path`` (and ``<plan>.json``) from ``onnx_path``; returns the plan path.

    ``verify(tmp_plan)`` runs on the finished plan under a temp name (its sidecar beside it) and
    raises to stop it from being published."""
    import time

    import tensorrt as trt

    from vitrt import cuda

    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise BuildError(f"batch profile {min_batch}/{opt_batch}/{max_batch}; expected 1 <= MIN <= OPT <= MAX")
    meta = Metadata.from_onnx(onnx_path)
    cuda.check(cuda._cudart().cudaSetDevice(device), "cudaSetDevice")
    gpu = cuda.device_properties(device)
    cc = tuple(int(v) for v in gpu["compute_capability"].split("."))
    need = MIN_COMPUTE.get(meta.precision, (0, 0))
    if cc < need:
        raise BuildError(f"{meta.precision} needs compute capability >= {need[0]}.{need[1]}; {gpu['name']} is "
                         f"{gpu['compute_capability']}. Build PRECISION=fp16 for this GPU (vitrt never downgrades "
                         "precision silently).")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:  # on by default: FP32 layers would silently run at TF32's 10-bit mantissa
        config.clear_flag(tf32)
    profile = builder.create_optimization_profile()
    item = meta.item_shape
    profile.set_shape(meta.input_name, (min_batch, *item), (opt_batch, *item), (max_batch, *item))
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    log(f"building {plan_path.name} from {onnx_path.name} ({meta.precision}, strongly typed, batch "
        f"{min_batch}/{opt_batch}/{max_batch}, opt level {opt_level}) on {gpu['name']} ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build {plan_path.name} (see the TensorRT log above)")
    data = bytes(serialized)
    if timing_cache is not None:
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    sidecar = dict(meta.data)
    sidecar["batch"] = {"min": min_batch, "opt": opt_batch, "max": max_batch, "dynamic": True}
    sidecar["plan"] = {
        "sha256": hashlib.sha256(data).hexdigest(), "tensorrt": trt.__version__,
        "gpu": gpu["name"], "compute_capability": gpu["compute_capability"], "driver": cuda.driver_version(),
        "workspace_gib": workspace_gib, "builder_optimization_level": opt_level, "strongly_typed": True,
        "source_onnx": {"file": onnx_path.name, "sha256": sha256_file(onnx_path)},
        "seconds": round(time.perf_counter() - t0, 1),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    publish_plan(plan_path, data, sidecar, verify)
    log(f"wrote {plan_path} ({len(data) / 1e6:.0f} MB) in {sidecar['plan']['seconds']} s")
    return plan_path


def publish_plan(plan_path: Path, data: bytes, sidecar: dict, verify: Callable[[Path], None] | None = None) -> None:
    """Write plan and sidecar under temp names, verify them together, then rename both into place.

    Between the two renames a reader may see the new plan with the old sidecar: the sha256 check
    refuses that pair, it never runs a plan with the wrong metadata."""
    Metadata(sidecar, source=f"{plan_path}.json")  # validate before writing anything
    final_json = plan_path.with_name(plan_path.name + ".json")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(data)
        tmp_json = tmp.with_name(tmp.name + ".json")
        try:
            write_json(tmp_json, sidecar)
            if verify is not None:
                verify(tmp)
            os.replace(tmp_json, final_json)
        finally:
            if tmp_json.exists():
                tmp_json.unlink()
