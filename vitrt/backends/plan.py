"""What a TensorRT plan must be before it runs: its sidecar (flavour, version, targets, sha256), this
GPU and TensorRT-RTX's own validity check, and its I/O tensors against the metadata. Each refusal is
an ArtifactError that says how to rebuild."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, BackendError
from ..metadata import Metadata, sha256_file

REBUILD = "Rebuild it on this machine with `make engine` (or `python -m export --plan`)."


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for the batch dimension
    max_shape: tuple[int, ...]

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self.max_shape[1:]

    @property
    def max_nbytes(self) -> int:
        return int(np.prod(self.max_shape)) * self.dtype.itemsize

    def nbytes(self, batch: int) -> int:
        return batch * int(np.prod(self.item_shape)) * self.dtype.itemsize


def tensor_specs(engine: Any, trt: Any, max_batch: int) -> list[TensorSpec]:
    """The engine's I/O tensors with their shapes at ``max_batch`` (inputs: checked against the profile)."""
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if any(d < 0 for d in shape[1:]):
            raise ArtifactError(f"plan tensor {name!r} has shape {shape}: only the batch dimension may be dynamic")
        if is_input:
            profile_max = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
            if profile_max[0] < max_batch:
                raise ArtifactError(f"plan profile allows batch {profile_max[0]} for {name!r}, metadata says {max_batch}")
        specs.append(TensorSpec(name, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), shape,
                                (max_batch,) + shape[1:]))
    return specs


def check_specs(specs: list[TensorSpec], meta: Metadata, plan: Path) -> None:
    """The engine's tensors must be what the sidecar says (names, dtypes, shapes without the batch)."""
    got = {s.name: (s.is_input, str(s.dtype), list(s.item_shape)) for s in specs}
    want = {meta.input_name: (True, meta.input_dtype, list(meta.item_shape))}
    want.update({n: (False, o["dtype"], list(o["shape"][1:])) for n, o in meta.data["outputs"].items()})
    if got != want:
        raise ArtifactError(f"{plan}: the engine's tensors are {got}; its sidecar says {want}. The engine is the "
                            f"truth: expected a sidecar that matches it. {REBUILD}")


FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}  # sidecar's flavour -> Python module
HOW_TO_GET = {"tensorrt": "`pip install 'vitrt[tensorrt]'` (full TensorRT, from NVIDIA's index)",
              "tensorrt-rtx": "`pip install 'vitrt[tensorrt-rtx]'` (TensorRT-RTX; tensorrt-rtx-cu12 for a CUDA 12 driver)"}
DATACENTER = ("TensorRT-RTX runs on RTX GPUs (sm_75 ... sm_121, no sm_90): on a datacenter GPU such as an "
              "H100/H200 (sm_90), build a plan there with full TensorRT: `make engine TRT=tensorrt`")


def _sm(cc: str) -> str:
    return "sm_" + str(cc).replace(".", "")


def plan_info(plan: Path, meta: Metadata) -> dict:
    """The sidecar's ``plan`` section, checked for the keys the runtime needs."""
    info = meta.data.get("plan")
    if not isinstance(info, dict) or not {"sha256", "tensorrt"} <= set(info):
        raise ArtifactError(f"{meta.source} is not a vitrt plan sidecar (no 'plan' section with sha256 and "
                            f"tensorrt version). {REBUILD}")
    flavour = info.get("flavour", "tensorrt")
    if flavour not in FLAVOURS:
        raise ArtifactError(f"{meta.source}: plan flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}. {REBUILD}")
    targets = info.get("targets") if flavour == "tensorrt-rtx" else [info.get("compute_capability")]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ArtifactError(f"{meta.source}: a {flavour} plan sidecar needs its target compute capabilities "
                            f"(got {targets!r}). {REBUILD}")
    return {**info, "flavour": flavour, "targets": targets}


def check_sidecar(plan: Path, meta: Metadata, trt_version: str, gpu: dict) -> dict:
    """Refuse a plan whose sidecar does not match it, this TensorRT, or this GPU; returns plan_info."""
    info = plan_info(plan, meta)
    digest = sha256_file(plan)
    if digest != info["sha256"]:
        raise ArtifactError(f"{plan} does not match its sidecar: sha256 {digest[:12]}..., sidecar says "
                            f"{str(info['sha256'])[:12]}... (the plan or the .plan.json was replaced). {REBUILD}")
    built = ".".join(str(info["tensorrt"]).split(".")[:3])
    here = ".".join(str(trt_version).split(".")[:3])
    name = "TensorRT-RTX" if info["flavour"] == "tensorrt-rtx" else "TensorRT"
    if built != here:
        raise ArtifactError(f"{plan} was built by {name} {info['tensorrt']}, this is {name} {trt_version}; "
                            f"plans only load in the version that built them. {REBUILD}")
    cc = gpu["compute_capability"]
    if info["flavour"] == "tensorrt":
        if str(info["compute_capability"]) != cc:
            raise ArtifactError(f"{plan} was built for compute capability {info['compute_capability']} "
                                f"({info.get('gpu', '?')}), this GPU is {cc}. {REBUILD}")
    elif cc not in info["targets"]:
        targets = ", ".join(_sm(t) for t in info["targets"])
        how = DATACENTER if cc == "9.0" else f"rebuild it for this GPU: `make engine TARGETS={_sm(cc).replace('_', '')}`"
        raise ArtifactError(f"{plan.name} is a TensorRT-RTX plan for {targets}; this GPU, {gpu['name']} "
                            f"({_sm(cc)}), is not among them. {how}")
    return info


def check_validity(runtime: Any, trt: Any, data: bytes, plan: Path, info: dict, gpu: dict) -> None:
    """TensorRT-RTX: ask the runtime whether this GPU, driver and version can run the plan, before
    deserializing it."""
    validity, diagnostics = runtime.get_engine_validity(data[: int(runtime.engine_header_size)])
    if validity != trt.EngineValidity.INVALID:
        return
    reasons = [n for n, v in trt.EngineInvalidityDiagnostics.__members__.items() if int(diagnostics) & int(v)]
    targets = ", ".join(_sm(t) for t in info["targets"])
    if "UNSUPPORTED_CC" in reasons:
        how = DATACENTER if gpu["compute_capability"] == "9.0" else \
            f"rebuild it for this GPU: `make engine TARGETS={_sm(gpu['compute_capability']).replace('_', '')}`"
    elif {"OLD_CUDA_DRIVER", "OLD_CUDA_RUNTIME"} & set(reasons):
        how = (f"update the NVIDIA driver (the plan needs CUDA {info.get('cuda_major', '?')}), or rebuild with the "
               "TensorRT-RTX wheel for this driver's CUDA (tensorrt-rtx-cu12)")
    elif "VERSION_MISMATCH" in reasons:
        how = f"rebuild it with this TensorRT-RTX ({trt.__version__}): `make engine`"
    else:
        how = REBUILD
    raise ArtifactError(f"TensorRT-RTX {trt.__version__} cannot run {plan.name} on {gpu['name']} "
                        f"({_sm(gpu['compute_capability'])}): {', '.join(reasons) or 'invalid engine'} "
                        f"(plan targets {targets}). {how}")


def import_tensorrt(flavour: str = "tensorrt"):
    try:
        return importlib.import_module(FLAVOURS[flavour])
    except ImportError:
        raise BackendError(f"{FLAVOURS[flavour]} is not installed; this plan needs it: {HOW_TO_GET[flavour]} on a "
                           "machine with an NVIDIA GPU (or run the .onnx artifact instead)") from None
