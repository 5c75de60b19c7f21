"""TensorRT backend for ``.plan`` artifacts, with cuda-python for memory, streams and CUDA graphs.

Buffers (pinned host and device) are sized for the profile's max batch and allocated once; one
stream; per call: copy in, ``set_input_shape``, ``execute_async_v3`` (or the CUDA graph captured for
that batch size), copy out, one synchronization. Thread safety: one lock per backend serializes
calls (they share a context, stream and buffers). For concurrent GPU work, open one ``Engine`` per
thread: each has its own context, stream and buffers.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, BackendError
from ..gpu import gpu_count
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


def check_sidecar(plan: Path, meta: Metadata, trt_version: str, compute_capability: str) -> None:
    """Refuse a plan whose sidecar does not match it, this TensorRT, or this GPU."""
    info = meta.data.get("plan")
    if not isinstance(info, dict) or not {"sha256", "tensorrt", "compute_capability"} <= set(info):
        raise ArtifactError(f"{meta.source} is not a vitrt plan sidecar (no 'plan' section with sha256, tensorrt, "
                            f"compute_capability). {REBUILD}")
    digest = sha256_file(plan)
    if digest != info["sha256"]:
        raise ArtifactError(f"{plan} does not match its sidecar: sha256 {digest[:12]}..., sidecar says "
                            f"{info['sha256'][:12]}... (the plan or the .plan.json was replaced). {REBUILD}")
    built = ".".join(str(info["tensorrt"]).split(".")[:3])
    here = ".".join(str(trt_version).split(".")[:3])
    if built != here:
        raise ArtifactError(f"{plan} was built by TensorRT {info['tensorrt']}, this is TensorRT {trt_version}; "
                            f"plans only load in the version that built them. {REBUILD}")
    if str(info["compute_capability"]) != compute_capability:
        raise ArtifactError(f"{plan} was built for compute capability {info['compute_capability']} "
                            f"({info.get('gpu', '?')}), this GPU is {compute_capability}. {REBUILD}")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("TensorRT is not installed; a .plan needs it: `pip install 'vitrt[tensorrt]'` on a "
                           "machine with an NVIDIA GPU (or run the .onnx artifact instead)") from None
    return trt


class TensorRTBackend(Backend):
    def __init__(self, path: str | os.PathLike, metadata: Metadata, device: int = 0, cuda_graphs: bool = True):
        self.path = Path(path)
        self.device = int(device)
        self._closed = True
        self._lock = threading.Lock()
        n = gpu_count()  # before TensorRT: without a GPU, deserializing a plan crashes the process
        if n == 0:
            raise BackendError("no NVIDIA GPU found (cudaGetDeviceCount reports none); a .plan needs one. "
                               "On this machine, run the .onnx artifact: vitrt.Engine('artifacts/b16_384_fp16.onnx')")
        if not 0 <= self.device < n:
            raise BackendError(f"device={device}; this machine has {n} GPU(s): expected 0..{n - 1}")
        from .. import cuda

        trt = import_tensorrt()
        cuda.check(cuda._cudart().cudaSetDevice(self.device), "cudaSetDevice")
        props = cuda.device_properties(self.device)
        check_sidecar(self.path, metadata, trt.__version__, props["compute_capability"])
        self.trt, self.cuda = trt, cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.runtime.engine_host_code_allowed = False
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.path} (corrupt or incompatible plan). {REBUILD}")
        self.max_batch = metadata.max_batch
        self.specs = tensor_specs(self.engine, trt, self.max_batch)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda.Stream()
        self.host = {s.name: cuda.HostBuffer(s.max_nbytes, s.dtype) for s in self.specs}
        self.device_buf = {s.name: cuda.DeviceBuffer(s.max_nbytes) for s in self.specs}
        for s in self.specs:
            if not self.context.set_tensor_address(s.name, self.device_buf[s.name].ptr):
                raise BackendError(f"set_tensor_address failed for {s.name!r}")
        self.use_graphs = bool(cuda_graphs)
        self.graphs: dict[int, Any] = {}
        self.name = f"tensorrt[{props['name']}]"
        self._closed = False

    def _enqueue(self, stream) -> None:
        if not self.context.execute_async_v3(stream.handle):
            raise BackendError("TensorRT execute_async_v3 returned False (see the TensorRT log above)")

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._closed:
                raise BackendError("this engine is closed; create a new vitrt.Engine")
            cuda = self.cuda
            cuda.check(cuda._cudart().cudaSetDevice(self.device), "cudaSetDevice")  # per thread
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
            return outputs

    def _capture(self, batch: int) -> None:
        """Record the enqueue for ``batch`` as a CUDA graph, after a plain run at that shape has let
        TensorRT do its per-shape setup (TensorRT's rule for capture). Capturing records, it does not
        execute. A plan that cannot be captured stays on plain enqueues."""
        try:
            self.graphs[batch] = self.cuda.Graph(self.stream, self._enqueue)
        except BackendError:
            self.use_graphs = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for g in self.graphs.values():
                g.close()
            self.graphs.clear()
            for buf in list(self.host.values()) + list(self.device_buf.values()):
                buf.close()
            self.stream.close()
            self.context = self.engine = self.runtime = None
