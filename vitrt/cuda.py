"""CUDA through cuda-python (``cuda.bindings.runtime``), the way NVIDIA's TensorRT samples do it.

Every call goes through :func:`check`, which raises a :class:`BackendError` naming the call and the
CUDA error. Buffers are allocated once; pinned host buffers are exposed as numpy arrays.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import BackendError


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise BackendError("cuda-python is not installed; expected `pip install 'vitrt[tensorrt]'` "
                           "(cuda-bindings) to run TensorRT plans") from None
    return cudart


def check(result: Any, what: str = "CUDA call") -> Any:
    """Unwrap a cuda-python result tuple ``(err, *values)``; raise BackendError unless it succeeded."""
    cudart = _cudart()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        try:
            desc = cudart.cudaGetErrorString(err)[1].decode()
        except Exception:  # pragma: no cover - a broken driver may fail here too
            desc = ""
        raise BackendError(f"{what} failed: {name} {desc}".strip())
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@lru_cache(maxsize=None)
def gpu_count() -> int:
    """Number of CUDA devices the driver reports, 0 when there is no driver or no GPU.

    Asked without touching TensorRT (whose lean runtime crashes without a GPU). Uses cuda-python's
    ``cudaGetDeviceCount``, which returns an error code, never raises, on a machine without a
    driver. Without cuda-python, falls back to the NVIDIA device nodes.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        import glob

        return len(glob.glob("/dev/nvidia[0-9]*"))
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        return 0
    return int(count)


def set_device(device: int) -> None:
    """Make ``device`` current for this thread (CUDA's current device is per thread)."""
    check(_cudart().cudaSetDevice(int(device)), f"cudaSetDevice({device})")


def get_device() -> int:
    return int(check(_cudart().cudaGetDevice(), "cudaGetDevice"))


@contextmanager
def using_device(device: int):
    """``device`` current for the block, the caller's current device restored after it (CUDA's current
    device is per thread state the caller owns: a library must not change it for good)."""
    before = get_device()
    if before != device:
        set_device(device)
    try:
        yield
    finally:
        if before != device:
            set_device(before)


def device_properties(device: int = 0) -> dict[str, Any]:
    """Name, compute capability and memory of ``device``."""
    cudart = _cudart()
    props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}",
            "total_memory": int(props.totalGlobalMem)}


def driver_version() -> str:
    v = check(_cudart().cudaDriverGetVersion(), "cudaDriverGetVersion")
    return f"{v // 1000}.{(v % 1000) // 10}"


class Stream:
    """A non-blocking stream: it does not synchronize with the legacy default stream, so another
    library's work there (PyTorch, ONNX Runtime's CUDA provider) neither waits on vitrt's nor breaks a
    graph capture on it (CUDA Runtime API, "Stream synchronization behavior"; graph capture on a
    blocking stream fails with cudaErrorStreamCaptureImplicit when the legacy stream is used)."""

    def __init__(self):
        cudart = _cudart()
        self.handle = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                            "cudaStreamCreateWithFlags(cudaStreamNonBlocking)")

    def synchronize(self) -> None:
        check(_cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            check(_cudart().cudaStreamDestroy(handle), "cudaStreamDestroy")


class DeviceBuffer:
    """``nbytes`` of device memory, freed by :meth:`close`."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(check(_cudart().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def close(self) -> None:
        ptr, self.ptr = self.ptr, 0
        if ptr:
            check(_cudart().cudaFree(ptr), "cudaFree")


class HostBuffer:
    """Pinned (page-locked) host memory seen as a flat numpy array of ``dtype``."""

    def __init__(self, nbytes: int, dtype: np.dtype):
        self.nbytes = int(nbytes)
        self.ptr = int(check(_cudart().cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.dtype(dtype))

    def close(self) -> None:
        ptr, self.ptr, self.array = self.ptr, 0, None
        if ptr:
            check(_cudart().cudaFreeHost(ptr), "cudaFreeHost")


def memcpy_htod_async(dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Stream) -> None:
    cudart = _cudart()
    check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                 stream.handle), "cudaMemcpyAsync(host->device)")


def memcpy_dtoh_async(dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    cudart = _cudart()
    check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                 stream.handle), "cudaMemcpyAsync(device->host)")


class Graph:
    """A CUDA graph captured from the work ``launch(stream)`` enqueues, replayed with :meth:`launch`.

    Every failure leaves the stream out of capture mode and frees what was made: an error in
    ``launch`` ends the capture and discards the partial graph, and that first error is the one
    raised (an EndCapture error after it is secondary); a failed instantiation destroys the graph."""

    def __init__(self, stream: Stream, launch) -> None:
        cudart = _cudart()
        self.stream = stream
        self.graph = self.exec = None
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(cudart.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            launch(stream)
        except BaseException:
            err, graph = cudart.cudaStreamEndCapture(stream.handle)
            if err == cudart.cudaError_t.cudaSuccess and graph is not None:
                cudart.cudaGraphDestroy(graph)
            raise
        self.graph = check(cudart.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        try:
            self.exec = check(cudart.cudaGraphInstantiate(self.graph, 0), "cudaGraphInstantiate")
        except BaseException:
            graph, self.graph = self.graph, None
            cudart.cudaGraphDestroy(graph)
            raise

    def launch(self) -> None:
        check(_cudart().cudaGraphLaunch(self.exec, self.stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        """Destroy the executable graph, then the graph; both are attempted, the first error raised."""
        cudart = _cudart()
        exec_, graph, self.exec, self.graph = self.exec, self.graph, None, None
        errors = []
        for handle, fn, name in ((exec_, cudart.cudaGraphExecDestroy, "cudaGraphExecDestroy"),
                                 (graph, cudart.cudaGraphDestroy, "cudaGraphDestroy")):
            if handle is not None:
                try:
                    check(fn(handle), name)
                except BackendError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]
