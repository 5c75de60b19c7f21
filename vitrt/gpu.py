"""Is there a usable NVIDIA GPU? Asked without touching TensorRT (which crashes without one)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def gpu_count() -> int:
    """Number of CUDA devices the driver reports, 0 when there is no driver or no GPU.

    Uses cuda-python's ``cudaGetDeviceCount`` (which returns an error code, never raises, on a
    machine without a driver). Without cuda-python, falls back to the NVIDIA device nodes.
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
