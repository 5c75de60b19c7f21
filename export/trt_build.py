"""ONNX -> TensorRT plan (strongly typed, one batch profile) + ``.plan.json`` sidecar, with either
TensorRT flavour:

- ``tensorrt`` (full TensorRT 10/11): builds on the GPU it targets (datacenter GPUs: A100, H100, ...),
  with a timing cache; the plan runs on that GPU model only.
- ``tensorrt-rtx`` (TensorRT-RTX): builds ahead of time with or without a GPU for a list of compute
  capabilities (sm_75 ... sm_121, no sm_90); kernels are JIT-compiled on the target GPU at first run.

Precision comes from the ONNX graph (DESIGN.md): the network is strongly typed and no precision
builder flag is ever set. What differs between the flavours is decided once, in :func:`probe`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib
import importlib.metadata as _md
import os
from pathlib import Path
from typing import Any, Callable

from vitrt.atomic import write_bytes, write_json
from vitrt.artifacts import sidecar_path
from vitrt.errors import BuildError
from vitrt.metadata import Metadata, sha256_file

from .defaults import MAX_BATCH_PLAN, MIN_BATCH, OPT_BATCH, OPT_LEVEL, RTX_TARGETS, WORKSPACE_GIB

FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}  # flavour -> Python module
#: Oldest compute capability whose tensor cores run each precision in TensorRT: the one place that
#: says which GPU generations run INT8 (Turing sm_75 on) and FP8 (Ada sm_89, Hopper sm_90 on); the
#: README, docs/precision.md and docs/tensorrt.md point here.
MIN_COMPUTE = {"fp32": (0, 0), "fp16": (7, 0), "int8": (7, 5), "fp8": (8, 9)}
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "UINT8": "uint8", "INT8": "int8", "INT32": "int32",
               "INT64": "int64", "BOOL": "bool", "BF16": "bfloat16", "FP8": "float8"}


@dataclasses.dataclass(frozen=True)
class Flavour:
    """What one TensorRT Python module can do, probed from the module itself."""

    name: str  # "tensorrt" or "tensorrt-rtx"
    trt: Any  # the module
    version: str
    cuda_major: int | None  # the CUDA major version its libraries were built for
    network_flags: int  # create_network flags for a strongly typed network
    targets: bool  # builds for a list of compute capabilities (ComputeCapability), ahead of time
    timing_cache: bool  # a timing cache is usable (TensorRT-RTX: it disables CPU-only AOT builds)
    needs_gpu: bool  # building needs a GPU here


def probe(trt: Any) -> Flavour:
    """Feature-detect the differences between TensorRT and TensorRT-RTX (and 10.x vs 11.x)."""
    version = str(trt.__version__)
    rtx = trt.__name__.split(".")[0] == "tensorrt_rtx"
    name = "tensorrt-rtx" if rtx else "tensorrt"
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    major = int(version.split(".")[0])
    if rtx:  # always strongly typed; NVIDIA's sample passes the flag to avoid a warning
        flags = 1 << int(flag) if flag is not None else 0
    elif major >= 11:  # always strongly typed, the flag is deprecated
        flags = 0
    elif flag is None:
        raise BuildError(f"TensorRT {version} has no strongly typed networks; expected TensorRT >= 10")
    else:
        flags = 1 << int(flag)
    targets = hasattr(trt, "ComputeCapability") and hasattr(trt.IBuilderConfig, "set_compute_capability")
    return Flavour(name=name, trt=trt, version=version, cuda_major=cuda_major(name), network_flags=flags,
                   targets=targets, timing_cache=not rtx, needs_gpu=not rtx)


def cuda_major(flavour: str) -> int | None:
    """The CUDA major version of the installed flavour's libraries, from its wheel's name (-cu12/-cu13)."""
    base = "tensorrt_rtx" if flavour == "tensorrt-rtx" else "tensorrt"
    for major in (13, 12, 11):
        for dist in (f"{base}_cu{major}_libs", f"{base}-cu{major}", f"{base}_cu{major}"):
            try:
                _md.version(dist)
                return major
            except _md.PackageNotFoundError:
                continue
    return None


def load(flavour: str) -> Flavour | str:
    """The probed flavour, or a sentence saying why it cannot build here."""
    from vitrt.cuda import gpu_count

    if flavour not in FLAVOURS:
        return f"TensorRT flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}"
    try:
        trt = importlib.import_module(FLAVOURS[flavour])
    except ImportError:
        how = ("`pip install tensorrt-rtx-cu13` (in the build extra)" if flavour == "tensorrt-rtx" else
               "make engine installs it where nvidia-smi works")
        return f"{FLAVOURS[flavour]} is not installed ({how})"
    if not hasattr(trt, "Builder"):
        return f"the installed {FLAVOURS[flavour]} has no Builder (a runtime-only package)"
    found = probe(trt)
    if found.needs_gpu and gpu_count() == 0:
        return "full TensorRT builds on the GPU it targets, and cudaGetDeviceCount reports none here"
    return found


def choose(asked: str = "auto") -> tuple[Flavour | None, str]:
    """``auto``: full TensorRT where there is a GPU and it is installed, else TensorRT-RTX.
    Returns (flavour or None, why none / what was chosen)."""
    if asked != "auto":
        found = load(asked)
        return (found, f"{asked} (asked)") if isinstance(found, Flavour) else (None, found)
    reasons = []
    for name in ("tensorrt", "tensorrt-rtx"):
        found = load(name)
        if isinstance(found, Flavour):
            return found, name + (f" (full TensorRT unavailable: {reasons[0]})" if reasons else "")
        reasons.append(found)
    return None, "; ".join(reasons)


def parse_targets(text: str | list[str] | None) -> list[str]:
    """``"sm86,sm_89,12.0,120"`` -> ``["8.6", "8.9", "12.0"]`` (sorted, unique)."""
    items = text if isinstance(text, list) else str(text or RTX_TARGETS).split(",")
    out = set()
    for item in (i.strip().lower() for i in items if i.strip()):
        digits = item.removeprefix("sm_").removeprefix("sm").replace(".", "")
        if not digits.isdigit() or len(digits) not in (2, 3):
            raise BuildError(f"TARGETS entry {item!r}; expected compute capabilities like sm86,sm89,sm120 (or 8.6)")
        out.add(f"{digits[:-1]}.{digits[-1]}")
    return sorted(out, key=lambda cc: tuple(int(v) for v in cc.split(".")))


def cc_tuple(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


def targets_for(precision: str, targets: list[str]) -> list[str]:
    """The targets that run ``precision`` (fp8 needs sm_89+)."""
    need = MIN_COMPUTE.get(precision, (0, 0))
    return [t for t in targets if cc_tuple(t) >= need]


def _set_targets(flavour: Flavour, config, targets: list[str]) -> None:
    trt = flavour.trt
    members = trt.ComputeCapability.__members__
    names = [f"SM{t.replace('.', '')}" for t in targets]
    bad = [t for t, n in zip(targets, names) if n not in members]
    if bad:
        have = sorted(m for m in members if m.startswith("SM"))
        raise BuildError(f"{flavour.name} {flavour.version} cannot target {', '.join('sm_' + b.replace('.', '') for b in bad)}; "
                         f"it knows {', '.join(have)}. Datacenter GPUs (sm_90: H100/H200) need full TensorRT, "
                         "built on that GPU: `make engine TRT=tensorrt` there")
    config.num_compute_capabilities = len(names)
    for i, n in enumerate(names):
        config.set_compute_capability(members[n], i)


def network_io(network, trt) -> dict[str, dict]:
    """The parsed network's inputs and outputs: name -> {"dtype", "shape" (-1 = dynamic), "input"}."""
    io = {}
    for is_input, count, get in ((True, network.num_inputs, network.get_input), (False, network.num_outputs, network.get_output)):
        for i in range(count):
            t = get(i)
            dtype = _TRT_DTYPES.get(str(t.dtype).split(".")[-1], str(t.dtype))
            io[t.name] = {"dtype": dtype, "shape": [int(d) for d in t.shape], "input": is_input}
    return io


def check_io(io: dict[str, dict], meta: Metadata, source: str) -> None:
    """The parsed network must be the graph the metadata describes (names, dtypes, shapes)."""
    want = {meta.input_name: {"dtype": meta.input_dtype, "shape": [-1, *meta.item_shape], "input": True}}
    for name, spec in meta.data["outputs"].items():
        want[name] = {"dtype": spec["dtype"], "shape": [-1, *[int(d) for d in spec["shape"][1:]]], "input": False}
    if io != want:
        raise BuildError(f"TensorRT parsed {source} into I/O {io}; expected {want} (the artifact's metadata)")


def build_plan(onnx_path: Path, plan_path: Path, flavour: Flavour, *, targets: list[str] | None = None,
               device: int = 0, min_batch: int = MIN_BATCH, opt_batch: int = OPT_BATCH,
               max_batch: int = MAX_BATCH_PLAN, workspace_gib: float = WORKSPACE_GIB, opt_level: int = OPT_LEVEL,
               timing_cache: Path | None = None, extra: dict | None = None, name: str | None = None,
               log: Callable[[str], None] = print) -> Path:
    """Write the plan built from ``onnx_path`` to ``plan_path`` and its sidecar beside it; returns
    the plan path. The caller publishes them (export/publish.py: temp names, gate, rename).

    Full TensorRT builds for the GPU ``device``; TensorRT-RTX for ``targets`` (compute capabilities).
    ``extra`` is merged into the sidecar's metadata; ``name`` is the plan's final name, for the log. The sidecar's ``parity`` says "not run" until
    :func:`record_parity` records the gate's result."""
    import time

    trt = flavour.trt
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise BuildError(f"batch profile {min_batch}/{opt_batch}/{max_batch}; expected 1 <= MIN <= OPT <= MAX")
    meta = Metadata.from_onnx(onnx_path)
    need = MIN_COMPUTE.get(meta.precision, (0, 0))
    gpu = None
    if flavour.targets:
        targets = list(targets or parse_targets(None))
        short = [t for t in targets if cc_tuple(t) < need]
        if short or not targets:
            raise BuildError(f"{meta.precision} needs compute capability >= {need[0]}.{need[1]}; targets "
                             f"{targets or 'none'} include {short}. Build it for newer targets (TARGETS=sm89,sm120)")
    else:
        from vitrt import cuda

        cuda.set_device(device)
        gpu = cuda.device_properties(device)
        if cc_tuple(gpu["compute_capability"]) < need:
            raise BuildError(f"{meta.precision} needs compute capability >= {need[0]}.{need[1]}; {gpu['name']} is "
                             f"{gpu['compute_capability']}. Build PRECISION=fp16 for this GPU (vitrt never "
                             "downgrades precision silently).")
        targets = [gpu["compute_capability"]]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flavour.network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{flavour.name}'s ONNX parser rejected {onnx_path.name}: {errors}")
    io = network_io(network, trt)
    check_io(io, meta, onnx_path.name)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:  # on by default: FP32 layers would silently run at TF32's 10-bit mantissa
        config.clear_flag(tf32)
    if flavour.targets:
        _set_targets(flavour, config, targets)
    profile = builder.create_optimization_profile()
    item = meta.item_shape
    profile.set_shape(meta.input_name, (min_batch, *item), (opt_batch, *item), (max_batch, *item))
    config.add_optimization_profile(profile)
    cache = None
    if flavour.timing_cache and timing_cache is not None:
        cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    where = gpu["name"] if gpu else "targets " + ", ".join("sm_" + t.replace(".", "") for t in targets)
    name = name or plan_path.name
    log(f"building {name} from {onnx_path.name} with {flavour.name} {flavour.version} ({meta.precision}, "
        f"strongly typed, batch {min_batch}/{opt_batch}/{max_batch}, opt level {opt_level}) for {where} ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"{flavour.name} failed to build {plan_path.name} (see the TensorRT log above)")
    data = bytes(serialized)
    if cache is not None:
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    sidecar = {**meta.data, **(extra or {})}
    sidecar["batch"] = {"min": min_batch, "opt": opt_batch, "max": max_batch, "dynamic": True}
    sidecar["plan"] = {
        "sha256": hashlib.sha256(data).hexdigest(), "flavour": flavour.name, "tensorrt": flavour.version,
        "cuda_major": flavour.cuda_major, "targets": targets,
        "gpu": gpu["name"] if gpu else None, "compute_capability": gpu["compute_capability"] if gpu else None,
        "driver": _driver() if gpu else None, "io": io,
        "workspace_gib": workspace_gib, "builder_optimization_level": opt_level, "strongly_typed": True,
        "source_onnx": {"file": onnx_path.name, "sha256": sha256_file(onnx_path)},
        "seconds": round(time.perf_counter() - t0, 1), "bytes": len(data),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    sidecar["parity"] = {"status": "not run", "note": NOT_RUN.format(plan=name)}
    Metadata(sidecar, source=os.fspath(sidecar_path(plan_path)))  # validate before writing anything
    plan_path.write_bytes(data)
    write_json(sidecar_path(plan_path), sidecar)
    log(f"built {name}: {len(data) / 1e6:.1f} MB in {sidecar['plan']['seconds']} s")
    return plan_path


def _driver() -> str:
    from vitrt import cuda

    return cuda.driver_version()


NOT_RUN = "not run here: run `vitrt verify {plan}` on the target GPU"


def record_parity(sidecar: Path, report: dict) -> None:
    """Put the gate's outcome into a plan's sidecar (its ``parity`` entry)."""
    import json

    data = json.loads(Path(sidecar).read_text("utf-8"))
    if report.get("passed") is None:
        data["parity"] = {"status": "not run", "note": report.get("note") or NOT_RUN.format(plan=report.get("artifact", "PLAN"))}
    else:
        data["parity"] = {"status": "passed" if report["passed"] else "failed (published with --allow-parity-failure)",
                          "backend": report.get("backend"),
                          "checks": {k: c["value"] for k, c in report.get("thresholds", {}).items()}}
    write_json(sidecar, data)
