"""TensorRT backend for ``.plan`` artifacts, with cuda-python for memory, streams and CUDA graphs.

Two flavours, named by the plan's sidecar: full TensorRT (``tensorrt``; the plan runs on the GPU
model it was built on) and TensorRT-RTX (``tensorrt_rtx``; built for a list of compute capabilities,
kernels JIT-compiled at first run and kept in a runtime cache beside the plan). For TensorRT-RTX the
runtime's ``get_engine_validity`` is asked before deserializing, so that an unsupported GPU, driver
or version gets an error that says what to do.

Buffers (pinned host and device) are sized for the profile's max batch and allocated once; one
non-blocking stream; per call: copy in, ``set_input_shape``, ``execute_async_v3`` (or the CUDA graph
captured for that batch size), copy out, one synchronization. Thread safety: one lock per backend
serializes calls (they share a stream and buffers). For concurrent GPU work, open one ``Engine`` per
thread: each has its own contexts, stream and buffers.

CUDA graphs and shapes (full TensorRT). TensorRT does its per-shape setup in the first enqueue after
a shape change, outside any graph, and a capture must follow a plain enqueue at that shape
(NvInferRuntime.h, enqueueV3's note on graph capture). A graph replayed after the context ran another
shape would run on that other shape's setup. So every captured batch size gets its own execution
context, whose shape never changes after its first run; the contexts share one scratch allocation
(``ExecutionContextAllocationStrategy.USER_MANAGED`` + ``set_device_memory``; allowed because they
never run concurrently: one lock, one stream). The cost is a context per batch size seen (host-side
state and a capture, no extra activation memory); the alternative, a plain enqueue at every shape
change, would make ``Engine.infer``'s split batches (32, then the rest) never replay a graph.
TensorRT-RTX keeps one context and captures its own graphs per shape (``WHOLE_GRAPH_CAPTURE``).

Every error path leaves the stream idle before the pinned buffers are reused, frees what it
allocated and raises the first error; a finalizer frees an Engine that is never closed (never at
interpreter shutdown, when the driver may be gone and the process's exit frees it all anyway).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..cuda import gpu_count
from ..errors import ArtifactError, BackendError
from ..metadata import Metadata
from .base import Backend
from .plan import (REBUILD, check_sidecar, check_specs, check_validity,  # noqa: F401 (re-exported)
                   import_tensorrt, plan_info, tensor_specs)

log = logging.getLogger("vitrt")


class _Resources:
    """Everything a TensorRT backend allocates, held apart from the backend so that its finalizer can
    free it without keeping the backend alive."""

    def __init__(self, device: int, cuda: Any):
        self.device, self.cuda = device, cuda
        self.graphs: dict[int, Any] = {}
        self.contexts: dict[int | None, Any] = {}
        self.runtime = self.engine = self.runtime_config = self.runtime_cache = None
        self.scratch = self.stream = None
        self.host: dict[str, Any] = {}
        self.device_buf: dict[str, Any] = {}

    def release(self) -> None:
        """Free everything, in the reverse order of creation, attempting every step; raise the first
        error. The stream is drained first (nothing may still run on what is freed); graphs before the
        contexts they launch; TensorRT's contexts before the runtime config and cache they use, the
        engine after its contexts, the runtime last (TensorRT's rule: an object outlives those created
        from it); the memory the contexts pointed at after them; the stream last."""
        cuda, self.cuda = self.cuda, None
        if cuda is None:
            return
        errors: list[BaseException] = []

        def attempt(fn, *args):
            try:
                fn(*args)
            except Exception as exc:
                errors.append(exc)

        try:
            before = cuda.get_device()
        except Exception as exc:
            errors.append(exc)
            before = None
        attempt(cuda.set_device, self.device)
        if self.stream is not None:
            attempt(self.stream.synchronize)
        for graph in self.graphs.values():
            attempt(graph.close)
        self.graphs.clear()
        self.contexts.clear()
        self.runtime_config = self.runtime_cache = None
        self.engine = None
        self.runtime = None
        for buf in [self.scratch, *self.device_buf.values(), *self.host.values()]:
            if buf is not None:
                attempt(buf.close)
        self.scratch, self.device_buf, self.host = None, {}, {}
        if self.stream is not None:
            attempt(self.stream.close)
        self.stream = None
        if before is not None and before != self.device:
            attempt(cuda.set_device, before)
        if errors:
            raise errors[0]


def _finalize(res: _Resources) -> None:
    """An Engine that was never closed: free its GPU resources, unless the interpreter is shutting
    down (the CUDA driver may be torn down by then; the process's exit frees everything)."""
    if sys.is_finalizing():
        return
    try:
        res.release()
    except Exception as exc:  # a finalizer has no caller to raise to
        log.warning("vitrt: freeing an unclosed TensorRT engine failed: %s", exc)


class TensorRTBackend(Backend):
    def __init__(self, path: str | os.PathLike, metadata: Metadata, device: int = 0, cuda_graphs: bool = True):
        self.path = Path(path)
        self.device = int(device)
        self.closed = True  # until everything is allocated: close() then frees nothing
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._savers: list[threading.Thread] = []
        self._res = None
        n = gpu_count()  # before TensorRT: without a GPU, deserializing a plan crashes the process
        if n == 0:
            raise BackendError("no NVIDIA GPU found (cudaGetDeviceCount reports none); a .plan needs one. "
                               "On this machine, run the .onnx artifact: vitrt.Engine('artifacts/b16_384_fp16.onnx')")
        if not 0 <= self.device < n:
            raise BackendError(f"device={device}; this machine has {n} GPU(s): expected 0..{n - 1}")
        from .. import cuda

        info = plan_info(self.path, metadata)
        self.flavour = info["flavour"]
        self.trt, self.cuda = import_tensorrt(self.flavour), cuda
        res = self._res = _Resources(self.device, cuda)
        self._finalizer = weakref.finalize(self, _finalize, res)
        self._finalizer.atexit = False
        try:
            with cuda.using_device(self.device):
                self._open(metadata, info, bool(cuda_graphs))
        except BaseException:
            self._finalizer.detach()
            try:
                res.release()
            except Exception:
                pass  # the first error is the one raised
            raise
        self.closed = False

    def _open(self, metadata: Metadata, info: dict, cuda_graphs: bool) -> None:
        trt, cuda, res = self.trt, self.cuda, self._res
        props = cuda.device_properties(self.device)
        info = check_sidecar(self.path, metadata, trt.__version__, props)
        self.logger = trt.Logger(trt.Logger.WARNING)
        res.runtime = trt.Runtime(self.logger)
        data = self.path.read_bytes()
        if self.flavour == "tensorrt-rtx":
            check_validity(res.runtime, trt, data, self.path, info, props)
        else:
            res.runtime.engine_host_code_allowed = False
        res.engine = res.runtime.deserialize_cuda_engine(data)
        del data
        if res.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.path} (corrupt or incompatible plan). {REBUILD}")
        self.max_batch = metadata.max_batch
        self.specs = tensor_specs(res.engine, trt, self.max_batch)
        check_specs(self.specs, metadata, self.path)
        self.cache_path = None
        res.stream = cuda.Stream()
        for s in self.specs:
            res.host[s.name] = cuda.HostBuffer(s.max_nbytes, s.dtype)
            res.device_buf[s.name] = cuda.DeviceBuffer(s.max_nbytes)
        # TensorRT-RTX captures CUDA graphs itself (after its JIT has specialized the kernels for a
        # shape), in its one context; vitrt captures its own only for full TensorRT, one context per
        # captured batch size (module docstring), all on one scratch allocation.
        self.use_graphs = cuda_graphs and self.flavour == "tensorrt"
        self._per_shape = self.use_graphs
        self._shapes: dict[int | None, int] = {}
        self._seen: set[int] = set()
        if self.flavour == "tensorrt-rtx":
            res.contexts[None] = self._bind(self._rtx_context(cuda_graphs, info["sha256"]))
        else:
            res.scratch = cuda.DeviceBuffer(max(int(res.engine.device_memory_size_v2), 1))
            if not self._per_shape:
                res.contexts[None] = self._new_context()
        self.name = f"{self.flavour}[{props['name']}]"

    @property
    def graphs(self) -> dict[int, Any]:
        """The CUDA graphs captured so far, by batch size (full TensorRT)."""
        return self._res.graphs if self._res is not None else {}

    def _bind(self, context):
        if context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        for s in self.specs:
            if not context.set_tensor_address(s.name, self._res.device_buf[s.name].ptr):
                raise BackendError(f"set_tensor_address failed for {s.name!r}")
        return context

    def _new_context(self):
        """Full TensorRT: a context on the shared scratch memory, bound to the I/O buffers."""
        res = self._res
        context = res.engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        context.set_device_memory(res.scratch.ptr, res.scratch.nbytes)
        return self._bind(context)

    def _rtx_context(self, cuda_graphs: bool, sha256: str):
        """TensorRT-RTX: a runtime config with the JIT runtime cache (loaded from beside the plan when
        it is there and valid for this GPU) and its own CUDA graph strategy."""
        from ..artifacts import runtime_cache_path

        trt, res = self.trt, self._res
        res.runtime_config = config = res.engine.create_runtime_config()
        res.runtime_cache = config.create_runtime_cache()
        self.cache_path = runtime_cache_path(self.path, sha256)
        if self.cache_path.is_file():
            res.runtime_cache.deserialize(self.cache_path.read_bytes())  # False: stale or another GPU; rebuilt
        config.set_runtime_cache(res.runtime_cache)
        config.cuda_graph_strategy = (trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE if cuda_graphs
                                      else trt.CudaGraphStrategy.DISABLED)
        return res.engine.create_execution_context(config)

    # --- the TensorRT-RTX runtime cache, written off the request path ----------------------------------
    def save_runtime_cache(self) -> None:
        """Write TensorRT-RTX's JIT kernels for this GPU beside the plan (atomically), so that the next
        start skips the compilation. The cache is serialized under the run lock (the JIT writes it
        during enqueues) and written to disk outside it. A folder that cannot be written is not an error."""
        res = self._res
        if res is None or res.runtime_cache is None or self.cache_path is None:
            return
        from ..atomic import write_bytes

        with self._save_lock:
            with self._lock:
                if res.runtime_cache is None:
                    return
                blob = bytes(res.runtime_cache.serialize())
            try:
                write_bytes(self.cache_path, blob)
            except OSError:
                pass

    def _save_cache_soon(self) -> None:
        """After a new batch size: save the cache from a helper thread, once this call has returned."""
        if self._res.runtime_cache is None or self.cache_path is None:
            return
        self._savers = [t for t in self._savers if t.is_alive()]
        saver = threading.Thread(target=self.save_runtime_cache, name="vitrt-runtime-cache", daemon=True)
        self._savers.append(saver)
        saver.start()

    # --- running ------------------------------------------------------------------------------------
    def _enqueue(self, context, stream) -> None:
        if not context.execute_async_v3(stream.handle):
            raise BackendError("TensorRT execute_async_v3 returned False (see the TensorRT log above)")

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self.closed:  # closed by another thread while this one waited for the lock
                raise BackendError("this engine is closed; expected an open one: create a new vitrt.Engine")
            with self.cuda.using_device(self.device):
                try:
                    return self._run_locked(feed)
                except BaseException:
                    # nothing may still read the pinned input or write the outputs when the next call
                    # reuses them: drain the stream; the first error is the one raised
                    try:
                        self._res.stream.synchronize()
                    except Exception:
                        pass
                    raise

    def _run_locked(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, res = self.cuda, self._res
        (spec,) = [s for s in self.specs if s.is_input]
        x = feed[spec.name]
        batch = len(x)
        key = batch if self._per_shape else None
        context = res.contexts.get(key)
        if context is None:
            context = res.contexts[key] = self._new_context()
        np.copyto(res.host[spec.name].array[: x.size], x.reshape(-1), casting="no")
        cuda.memcpy_htod_async(res.device_buf[spec.name], res.host[spec.name], spec.nbytes(batch), res.stream)
        if self._shapes.get(key) != batch:
            if not context.set_input_shape(spec.name, (batch,) + spec.item_shape):
                raise BackendError(f"set_input_shape({spec.name!r}, batch {batch}) refused by the plan's profile")
            self._shapes[key] = batch
        graph = res.graphs.get(batch) if self.use_graphs else None
        if graph is not None:
            graph.launch()
        else:
            self._enqueue(context, res.stream)
        outs = [s for s in self.specs if not s.is_input]
        for s in outs:
            cuda.memcpy_dtoh_async(res.host[s.name], res.device_buf[s.name], s.nbytes(batch), res.stream)
        res.stream.synchronize()
        outputs = {}
        for s in outs:
            n = batch * int(np.prod(s.item_shape))
            outputs[s.name] = res.host[s.name].array[:n].reshape((batch,) + s.item_shape).copy()
        if graph is None and self.use_graphs:
            self._capture(batch, context)
        if batch not in self._seen:  # a new shape: TensorRT-RTX compiled kernels for it
            self._seen.add(batch)
            self._save_cache_soon()
        return outputs

    def _capture(self, batch: int, context) -> None:
        """Record the enqueue for ``batch`` as a CUDA graph, after a plain run at that shape has let
        TensorRT do its per-shape setup (TensorRT's rule for capture). Capturing records, it does not
        execute. A plan that cannot be captured stays on plain enqueues, and the log says why."""
        try:
            self._res.graphs[batch] = self.cuda.Graph(self._res.stream, lambda s: self._enqueue(context, s))
        except Exception as exc:
            self.use_graphs = False
            log.warning("vitrt: CUDA graphs turned off for %s: capturing batch %d failed (%s); plain enqueues "
                        "from now on", self.path.name, batch, exc)

    def _close(self) -> None:
        for saver in self._savers:  # they take the lock: wait for them outside it
            saver.join()
        try:
            self.save_runtime_cache()
        finally:
            with self._lock:
                self._finalizer.detach()
                self._res.release()
