"""TensorRT backend for ``.plan`` artifacts, with cuda-python for memory, streams and CUDA graphs.

Two flavours, named by the plan's sidecar: full TensorRT (``tensorrt``; the plan runs on the GPU
model it was built on) and TensorRT-RTX (``tensorrt_rtx``; built for a list of compute capabilities,
kernels JIT-compiled at first run and kept in a runtime cache beside the plan). For TensorRT-RTX the
runtime's ``get_engine_validity`` is asked before deserializing, so that an unsupported GPU, driver
or version gets an error that says what to do.

Buffers (pinned host and device) are sized for the profile's max batch and allocated once; one
stream; per call: copy in, ``set_input_shape``, ``execute_async_v3`` (or the CUDA graph captured for
that batch size), copy out, one synchronization. Thread safety: one lock per backend serializes
calls (they share a context, stream and buffers). For concurrent GPU work, open one ``Engine`` per
thread: each has its own context, stream and buffers.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, BackendError
from ..cuda import gpu_count
from ..metadata import Metadata, sha256_file
from .base import Backend

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


class TensorRTBackend(Backend):
    def __init__(self, path: str | os.PathLike, metadata: Metadata, device: int = 0, cuda_graphs: bool = True):
        self.path = Path(path)
        self.device = int(device)
        self.closed = True  # until everything is allocated: close() then frees nothing
        self._lock = threading.Lock()
        n = gpu_count()  # before TensorRT: without a GPU, deserializing a plan crashes the process
        if n == 0:
            raise BackendError("no NVIDIA GPU found (cudaGetDeviceCount reports none); a .plan needs one. "
                               "On this machine, run the .onnx artifact: vitrt.Engine('artifacts/b16_384_fp16.onnx')")
        if not 0 <= self.device < n:
            raise BackendError(f"device={device}; this machine has {n} GPU(s): expected 0..{n - 1}")
        from .. import cuda

        info = plan_info(self.path, metadata)
        self.flavour = info["flavour"]
        trt = import_tensorrt(self.flavour)
        cuda.set_device(self.device)
        props = cuda.device_properties(self.device)
        info = check_sidecar(self.path, metadata, trt.__version__, props)
        self.trt, self.cuda = trt, cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        data = self.path.read_bytes()
        if self.flavour == "tensorrt-rtx":
            check_validity(self.runtime, trt, data, self.path, info, props)
        else:
            self.runtime.engine_host_code_allowed = False
        self.engine = self.runtime.deserialize_cuda_engine(data)
        del data
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.path} (corrupt or incompatible plan). {REBUILD}")
        self.max_batch = metadata.max_batch
        self.specs = tensor_specs(self.engine, trt, self.max_batch)
        check_specs(self.specs, metadata, self.path)
        self.runtime_cache = self.cache_path = None
        if self.flavour == "tensorrt-rtx":
            self.context = self._rtx_context(bool(cuda_graphs), info["sha256"])
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda.Stream()
        self.host = {s.name: cuda.HostBuffer(s.max_nbytes, s.dtype) for s in self.specs}
        self.device_buf = {s.name: cuda.DeviceBuffer(s.max_nbytes) for s in self.specs}
        for s in self.specs:
            if not self.context.set_tensor_address(s.name, self.device_buf[s.name].ptr):
                raise BackendError(f"set_tensor_address failed for {s.name!r}")
        # TensorRT-RTX captures CUDA graphs itself (after its JIT has specialized the kernels for a
        # shape); vitrt captures its own only for full TensorRT.
        self.use_graphs = bool(cuda_graphs) and self.flavour == "tensorrt"
        self.graphs: dict[int, Any] = {}
        self._seen: set[int] = set()
        self.name = f"{self.flavour}[{props['name']}]"
        self.closed = False

    def _rtx_context(self, cuda_graphs: bool, sha256: str):
        """TensorRT-RTX: a runtime config with the JIT runtime cache (loaded from beside the plan when
        it is there and valid for this GPU) and its own CUDA graph strategy."""
        from ..artifacts import runtime_cache_path

        trt = self.trt
        config = self.engine.create_runtime_config()
        self.runtime_cache = config.create_runtime_cache()
        self.cache_path = runtime_cache_path(self.path, sha256)
        if self.cache_path.is_file():
            self.runtime_cache.deserialize(self.cache_path.read_bytes())  # False: stale or another GPU; rebuilt
        config.set_runtime_cache(self.runtime_cache)
        config.cuda_graph_strategy = (trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE if cuda_graphs
                                      else trt.CudaGraphStrategy.DISABLED)
        return self.engine.create_execution_context(config)

    def save_runtime_cache(self) -> None:
        """Write TensorRT-RTX's JIT kernels for this GPU beside the plan (atomically), so that the next
        start skips the compilation. A cache folder that cannot be written is not an error."""
        if self.runtime_cache is None or self.cache_path is None:
            return
        from ..atomic import write_bytes

        try:
            write_bytes(self.cache_path, bytes(self.runtime_cache.serialize()))
        except OSError:
            pass

    def _enqueue(self, stream) -> None:
        if not self.context.execute_async_v3(stream.handle):
            raise BackendError("TensorRT execute_async_v3 returned False (see the TensorRT log above)")

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self.closed:  # closed by another thread while this one waited for the lock
                raise BackendError("this engine is closed; expected an open one: create a new vitrt.Engine")
            cuda = self.cuda
            cuda.set_device(self.device)  # per thread
            batch = None
            for s in self.specs:
                if s.is_input:
                    x = feed[s.name]
                    batch = len(x)
                    np.copyto(self.host[s.name].array[: x.size], x.reshape(-1), casting="no")
                    cuda.memcpy_htod_async(self.device_buf[s.name], self.host[s.name], s.nbytes(batch), self.stream)
                    if not self.context.set_input_shape(s.name, (batch,) + s.item_shape):
                        raise BackendError(f"set_input_shape({s.name!r}, batch {batch}) refused by the plan's profile")
            graph = self.graphs.get(batch)
            if graph is not None:
                graph.launch()
            else:
                self._enqueue(self.stream)
            outputs = {}
            for s in self.specs:
                if not s.is_input:
                    cuda.memcpy_dtoh_async(self.host[s.name], self.device_buf[s.name], s.nbytes(batch), self.stream)
            self.stream.synchronize()
            for s in self.specs:
                if not s.is_input:
                    n = batch * int(np.prod(s.item_shape))
                    outputs[s.name] = self.host[s.name].array[:n].reshape((batch,) + s.item_shape).copy()
            if graph is None and self.use_graphs:
                self._capture(batch)
            if batch not in self._seen:  # a new shape: TensorRT-RTX compiled kernels for it
                self._seen.add(batch)
                self.save_runtime_cache()
            return outputs

    def _capture(self, batch: int) -> None:
        """Record the enqueue for ``batch`` as a CUDA graph, after a plain run at that shape has let
        TensorRT do its per-shape setup (TensorRT's rule for capture). Capturing records, it does not
        execute. A plan that cannot be captured stays on plain enqueues."""
        try:
            self.graphs[batch] = self.cuda.Graph(self.stream, self._enqueue)
        except BackendError:
            self.use_graphs = False

    def _close(self) -> None:
        with self._lock:
            self.save_runtime_cache()
            for g in self.graphs.values():
                g.close()
            self.graphs.clear()
            for buf in list(self.host.values()) + list(self.device_buf.values()):
                buf.close()
            self.stream.close()
            self.context = self.engine = self.runtime = self.runtime_cache = None
