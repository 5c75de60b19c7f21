"""A fake GPU strict enough to fail the way a GPU fails: cuda-python's runtime API and TensorRT's engine
and context, for the backend's tests on machines without a GPU.

What it models, because the backend's correctness depends on it:
- streams are queues: async copies and kernels run when the stream is synchronized, and a copy reads
  the pinned host buffer at that moment (so work left in flight shows up in the next call);
- capture records instead of running; a graph replays the records; synchronizing a capturing stream
  is an error;
- the legacy default stream: "another library" launching there while a *blocking* stream captures
  invalidates that capture and fails its own launch (cudaErrorStreamCaptureImplicit);
- an execution context does its per-shape setup in the first enqueue after a shape change, on the
  host, outside any graph, and refuses that first enqueue under capture (NvInferRuntime.h's note on
  enqueueV3 and graph capture); kernels run on the setup in force when they execute, so a graph
  replayed after another shape's setup computes with the wrong batch;
- sticky errors: once set, every call fails (and is still counted);
- every allocation, stream and graph is tracked, so a leak is visible.

The real ``cuda.bindings.runtime`` enums are used, so vitrt's error handling sees real values.
"""

from __future__ import annotations

import ctypes
import threading
import types

import numpy as np
from cuda.bindings import runtime as real

E = real.cudaError_t
OK = E.cudaSuccess
ITEM = 384 * 384 * 3


class FakeCudart:
    cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode = real.cudaError_t, real.cudaMemcpyKind, real.cudaStreamCaptureMode
    cudaStreamNonBlocking = real.cudaStreamNonBlocking

    def __init__(self, devices: int = 1):
        self.devices, self.tls = devices, threading.local()
        self.mem: dict[int, np.ndarray] = {}
        self.host: dict[int, ctypes.Array] = {}
        self.streams: dict[int, types.SimpleNamespace] = {}
        self.graphs: dict[int, list] = {}
        self.execs: dict[int, list] = {}
        self.calls: list[str] = []
        self.sticky = None
        self.fail: dict[str, tuple[int, object]] = {}  # name -> (fail at the n-th call from now, error)
        self._next = 0x1000

    def _handle(self) -> int:
        self._next += 0x100
        return self._next

    def _api(self, name: str):
        self.calls.append(name)
        if self.sticky is not None:
            return self.sticky
        if name in self.fail:
            n, err = self.fail[name]
            if n <= 1:
                del self.fail[name]
                return err
            self.fail[name] = (n - 1, err)
        return None

    def live(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("mem", "host", "streams", "graphs", "execs")}

    def pending(self) -> int:
        return sum(len(s.queue) for s in self.streams.values())

    def enqueue(self, handle, op) -> None:
        s = self.streams[handle]
        (s.capturing if s.capturing is not None else s.queue).append(op)

    # --- devices --------------------------------------------------------------------------------------
    def cudaGetDeviceCount(self):
        return self._api("cudaGetDeviceCount") or OK, self.devices

    def cudaGetDevice(self):
        return self._api("cudaGetDevice") or OK, getattr(self.tls, "device", 0)

    def cudaSetDevice(self, d):
        err = self._api("cudaSetDevice") or (OK if 0 <= d < self.devices else E.cudaErrorInvalidDevice)
        if err == OK:
            self.tls.device = d
        return (err,)

    def cudaGetDeviceProperties(self, d):
        return OK, types.SimpleNamespace(name=b"Fake GPU", major=9, minor=0, totalGlobalMem=1 << 34)

    def cudaGetErrorString(self, err):
        return OK, f"fake {getattr(err, 'name', err)}".encode()

    # --- streams, memory, copies -------------------------------------------------------------------
    def cudaStreamCreate(self):
        return self.cudaStreamCreateWithFlags(0)

    def cudaStreamCreateWithFlags(self, flags):
        err = self._api("cudaStreamCreate")
        if err:
            return err, None
        h = self._handle()
        self.streams[h] = types.SimpleNamespace(blocking=not flags & 1, queue=[], capturing=None, invalid=False)
        return OK, h

    def cudaStreamSynchronize(self, h):
        err = self._api("cudaStreamSynchronize")
        if err:
            return (err,)
        s = self.streams[h]
        if s.capturing is not None:
            s.invalid = True
            return (E.cudaErrorStreamCaptureUnsupported,)
        while s.queue:
            s.queue.pop(0)()
        return (OK,)

    def cudaStreamDestroy(self, h):
        err = self._api("cudaStreamDestroy")
        return (err,) if err else (self.streams.pop(h) and OK,)

    def cudaMalloc(self, n):
        err = self._api("cudaMalloc")
        if err:
            return err, None
        h = self._handle()
        self.mem[h] = np.zeros(n, np.uint8)
        return OK, h

    def cudaFree(self, ptr):
        return (self._api("cudaFree") or (self.mem.pop(ptr) is not None and OK),)

    def cudaMallocHost(self, n):
        err = self._api("cudaMallocHost")
        if err:
            return err, None
        buf = (ctypes.c_byte * n)()
        self.host[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    def cudaFreeHost(self, ptr):
        return (self._api("cudaFreeHost") or (self.host.pop(ptr) is not None and OK),)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        err = self._api("cudaMemcpyAsync")
        if err:
            return (err,)
        if kind == real.cudaMemcpyKind.cudaMemcpyHostToDevice:
            def op():  # reads the pinned buffer when it runs, not when it was enqueued
                self.mem[dst][:n] = np.frombuffer(self.host[src], np.uint8)[:n]
        else:
            def op():
                np.frombuffer(self.host[dst], np.uint8)[:n] = self.mem[src][:n]
        self.enqueue(stream, op)
        return (OK,)

    # --- graphs ------------------------------------------------------------------------------------
    def cudaStreamBeginCapture(self, h, mode):
        err = self._api("cudaStreamBeginCapture")
        if not err:
            self.streams[h].capturing, self.streams[h].invalid = [], False
        return (err or OK,)

    def cudaStreamEndCapture(self, h):
        err = self._api("cudaStreamEndCapture")
        s = self.streams[h]
        ops, s.capturing = s.capturing, None
        if err or s.invalid:
            return err or E.cudaErrorStreamCaptureInvalidated, None
        g = self._handle()
        self.graphs[g] = ops
        return OK, g

    def cudaGraphInstantiate(self, g, flags):
        err = self._api("cudaGraphInstantiate")
        if err:
            return err, None
        e = self._handle()
        self.execs[e] = list(self.graphs[g])
        return OK, e

    def cudaGraphLaunch(self, e, h):
        err = self._api("cudaGraphLaunch")
        if not err:
            for op in self.execs[e]:
                self.enqueue(h, op)
        return (err or OK,)

    def cudaGraphExecDestroy(self, e):
        return (self._api("cudaGraphExecDestroy") or (self.execs.pop(e) is not None and OK),)

    def cudaGraphDestroy(self, g):
        return (self._api("cudaGraphDestroy") or (self.graphs.pop(g) is not None and OK),)

    # --- another library in the same process ---------------------------------------------------------
    def legacy_default_stream_launch(self):
        """Work on the legacy default stream: it synchronizes with every blocking stream, which a
        capturing stream cannot do: that capture is invalidated and this launch fails."""
        bad = [s for s in self.streams.values() if s.blocking and s.capturing is not None]
        for s in bad:
            s.invalid = True
        return E.cudaErrorStreamCaptureImplicit if bad else OK


# --- TensorRT: engine, context, runtime -----------------------------------------------------------------
class FakeContext:
    """logits[i, :] = mean pixel of image i; embedding[i, :] = first pixel of image i (computed by the
    'kernel' when the stream runs it, over the batch of the per-shape setup in force then)."""

    def __init__(self, engine, config=None):
        self.engine, self.cudart, self.config = engine, engine.cudart, config
        self.addr, self.shape, self.setup, self.pending, self.scratch = {}, None, None, False, None
        self.on_enqueue = engine.on_enqueue
        engine.contexts.append(self)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return self.engine.address_ok

    def set_device_memory(self, ptr, size):
        assert size >= self.engine.device_memory_size_v2 and ptr in self.cudart.mem, "scratch too small or not device memory"
        self.scratch = ptr

    def set_input_shape(self, name, shape):
        if tuple(shape) != self.shape:
            self.shape, self.pending = tuple(shape), True
        return shape[0] <= self.engine.max_batch

    def execute_async_v3(self, stream):
        s = self.cudart.streams[stream]
        if self.engine.user_managed(self) and self.scratch is None:
            return False  # USER_MANAGED without set_device_memory: TensorRT refuses to run
        if self.pending:
            if s.capturing is not None:  # the first enqueue after a shape change cannot be captured
                s.invalid = True
                return False
            self.setup, self.pending = self.shape[0], False  # host side, now, outside any graph
        if self.on_enqueue:
            self.on_enqueue(self, s)
        w, mem = self.engine.width, self.cudart.mem

        def kernel():
            n = self.setup  # the setup in force when the kernel runs
            img = mem[self.addr["image"]][: n * ITEM].reshape(n, ITEM)
            mem[self.addr["logits"]].view(np.float32)[: n * 1000] = np.repeat(img.mean(1), 1000)
            mem[self.addr["embedding"]].view(np.float32)[: n * w] = np.repeat(img[:, 0].astype(np.float32), w)

        self.cudart.enqueue(stream, kernel)
        self.engine.log.append(f"enqueue {self.shape[0]}" + (" (captured)" if s.capturing is not None else ""))
        return True


class FakeEngine:
    """Speaks TensorRT's ICudaEngine tensor API for image -> logits, embedding."""

    def __init__(self, cudart=None, max_batch=32, width=768):
        self.cudart, self.max_batch, self.width = cudart, max_batch, width
        self.tensors = [("image", "in", np.uint8, (-1, 384, 384, 3)), ("logits", "out", np.float32, (-1, 1000)),
                        ("embedding", "out", np.float32, (-1, width))]
        self.num_io_tensors = len(self.tensors)
        self.device_memory_size_v2 = 1 << 12
        self.contexts, self.log, self.on_enqueue, self.address_ok, self.managed = [], [], None, True, set()

    def _t(self, name):
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_name(self, i):
        return self.tensors[i][0]

    def get_tensor_mode(self, name):
        return self._t(name)[1]

    def get_tensor_dtype(self, name):
        return self._t(name)[2]

    def get_tensor_shape(self, name):
        return self._t(name)[3]

    def get_tensor_profile_shape(self, name, profile):
        item = self._t(name)[3][1:]
        return [(1, *item), (8, *item), (self.max_batch, *item)]

    def create_execution_context(self, arg=None):
        ctx = FakeContext(self, arg if isinstance(arg, types.SimpleNamespace) else None)
        if arg == "USER_MANAGED":
            self.managed.add(id(ctx))
        return ctx

    def user_managed(self, ctx):
        return id(ctx) in self.managed


def fake_trt(engine, version="10.14.1.48"):
    """A module-like object with the TensorRT names the backend uses, serving ``engine``."""
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine, engine_host_code_allowed=True)
    return types.SimpleNamespace(
        __version__=version, TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"), nptype=lambda dt: dt,
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}), Runtime=lambda logger: runtime,
        ExecutionContextAllocationStrategy=types.SimpleNamespace(STATIC="STATIC", USER_MANAGED="USER_MANAGED"),
        runtime=runtime)
