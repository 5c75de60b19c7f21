"""ONNX Runtime backend: TensorRT EP, then CUDA EP, then CPU, or the providers you pass."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..errors import ArtifactError, BackendError
from ..cuda import gpu_count
from .base import Backend

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = PREFERENCE[:2]


def default_providers() -> list[str]:
    """The best providers present: GPU ones only when a GPU is there (ORT lists them regardless)."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    have_gpu = gpu_count() > 0
    return [p for p in PREFERENCE if p in available and (have_gpu or p not in GPU_PROVIDERS)]


class OnnxRuntimeBackend(Backend):
    def __init__(self, path: str | os.PathLike, providers: Sequence | None = None,
                 threads: int | None = None, session_config: dict[str, str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed; expected `pip install 'vitrt[cpu]'` "
                               "(or onnxruntime-gpu) to run .onnx artifacts") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        for key, value in (session_config or {}).items():
            opts.add_session_config_entry(key, value)
        chosen = list(providers) if providers else default_providers()
        try:
            self.session = ort.InferenceSession(os.fspath(path), opts, providers=chosen)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"ONNX Runtime could not load {os.fspath(path)!r}: {exc}") from None
        self.providers = self.session.get_providers()
        self.name = f"onnxruntime[{self.providers[0]}]"
        self._outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session
        if session is None:
            raise BackendError("this engine is closed; create a new vitrt.Engine")
        try:
            values = session.run(self._outputs, feed)  # ORT sessions are thread-safe for run()
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed: {exc}") from None
        return dict(zip(self._outputs, values))

    def close(self) -> None:
        self.session = None
