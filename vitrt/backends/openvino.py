"""OpenVINO backend: runs an ``.onnx`` artifact on OpenVINO's CPU plugin (``pip install 'vitrt[openvino]'``).

OpenVINO reads the artifact's ONNX graph as it is (Q/DQ pairs become its low-precision int8 ops), so
the file ``make engine`` verified is the file that runs. :func:`vitrt.fleet.cpu_backend` says where
``Engine`` picks it over ONNX Runtime (the CPUs where it measured faster, docs/benchmarks.md).

Settings: ``PERFORMANCE_HINT=LATENCY`` (one stream, every thread on each request),
``INFERENCE_NUM_THREADS`` = the Engine's threads, and ``INFERENCE_PRECISION_HINT=f32``: on CPUs with
AVX-512 BF16 or AMX, OpenVINO's default runs the unquantized ops in bf16, which the artifact's parity
gate never saw. The first :data:`STATIC_SHAPES` batch sizes seen get a model compiled for that static
shape (6 % faster than the dynamic one at batch 1 on the int8-cpu ViT, docs/benchmarks.md; about a
second to compile each); later sizes share one model compiled with a dynamic batch dimension. Infer
requests come from a pool per compiled model (an OpenVINO request serves one call at a time).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import ArtifactError, BackendError
from ..metadata import Metadata
from .base import Backend, check_io

#: The compile settings (see the module doc); INFERENCE_NUM_THREADS is added per Engine.
CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
#: How many batch sizes get a model compiled for their static shape (each holds its own weights).
STATIC_SHAPES = 2
_OV_TYPES = {"u8": "uint8", "f32": "float32", "f16": "float16"}


def _ov():
    try:
        import openvino as ov
    except ImportError:
        raise BackendError("openvino is not installed; expected `pip install 'vitrt[openvino]'`, or "
                           "backend='onnxruntime'") from None
    return ov


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None (no import: ``importlib.metadata``)."""
    import importlib.metadata as md

    try:
        return md.version("openvino")
    except md.PackageNotFoundError:
        return None


def _shape(partial) -> list:
    return [d.get_length() if d.is_static else "N" for d in partial]


def check_model(model, meta: Metadata, path: str) -> None:
    """The graph's I/O must be the metadata's (the graph is the truth), as for ONNX Runtime."""
    got_in = [(i.any_name, _OV_TYPES.get(i.get_element_type().get_type_name(), str(i.get_element_type())),
               _shape(i.get_partial_shape())) for i in model.inputs]
    got_out = {o.any_name: (_OV_TYPES.get(o.get_element_type().get_type_name(), str(o.get_element_type())),
                            _shape(o.get_partial_shape())[1:]) for o in model.outputs}
    check_io(got_in, got_out, meta, path)


def _warn_saturation(metadata: Metadata, path: str, cpu=None) -> None:
    """Warn when an int8-cpu graph runs on OpenVINO on a CPU without 8-bit dot products: its u8 x s8
    kernels saturate there (vitrt.cpu.INT8_DOT_ISA) and OpenVINO has no exact mode. Measured: the toy
    ViT's photo cosine 0.982 under an emulated AVX2 CPU (0.9997 with VNNI); the trained ViT-S's 0.9883 on
    the CI run of 2026-12-06, its CPU not recorded (docs/precision.md, "Without VNNI")."""
    import logging

    from ..cpu import read_cpuinfo, int8_saturates

    if metadata.precision == "int8-cpu" and int8_saturates(cpu or read_cpuinfo()):
        logging.getLogger("vitrt").warning(
            "%s is int8 and this CPU has none of AVX-512 VNNI, AVX-VNNI, AMX-INT8: OpenVINO's 8-bit products "
            "saturate here and its outputs drift from the verified ones (photo cosine 0.98-0.99 measured); "
            "expected backend='onnxruntime' (exact here, what Engine picks on this CPU), or `vitrt verify "
            "--backend openvino` to measure it", path)


class OpenVINOBackend(Backend):
    def __init__(self, path: str | os.PathLike, metadata: Metadata, threads: int):
        ov = _ov()
        if metadata.precision not in ("fp32", "int8-cpu"):
            raise BackendError(f"{os.fspath(path)!r} is a {metadata.precision} artifact; vitrt runs fp32 and int8-cpu "
                               "artifacts on OpenVINO: expected backend='onnxruntime' for it")
        core = ov.Core()
        try:
            model = core.read_model(os.fspath(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ArtifactError(f"OpenVINO could not read {os.fspath(path)!r}: {exc}") from None
        check_model(model, metadata, os.fspath(path))
        _warn_saturation(metadata, os.fspath(path))
        self.config = {**CONFIG, "INFERENCE_NUM_THREADS": int(threads)}
        self.core, self.model, self.path = core, model, os.fspath(path)
        self.compiled: dict = {None: self._compile(model)}  # batch size (None: dynamic) -> compiled model
        self._outputs = [o.any_name for o in model.outputs]
        self._free: dict = {}  # batch size -> idle infer requests
        self._lock = threading.Lock()
        self.name = f"openvino[CPU {openvino_version()}]"

    def _compile(self, model):
        try:
            return self.core.compile_model(model, "CPU", self.config)
        except Exception as exc:
            raise BackendError(f"OpenVINO could not compile {self.path!r} for the CPU: {exc}") from None

    def _request(self, n: int):
        """An idle infer request for a batch of ``n`` (the caller holds the lock)."""
        if self.compiled is None:
            raise BackendError("this engine is closed; expected an open one: create a new vitrt.Engine")
        key = n if n in self.compiled else None
        if key is None and len(self.compiled) <= STATIC_SHAPES:
            model = self.model.clone()
            model.reshape({model.inputs[0].any_name: [n, *self.model.inputs[0].get_partial_shape()[1:].to_shape()]})
            self.compiled[n] = self._compile(model)
            key = n
        free = self._free.setdefault(key, [])
        return key, (free.pop() if free else self.compiled[key].create_infer_request())

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feed.values())))
        with self._lock:
            key, request = self._request(n)
        try:
            out = request.infer(feed)
            values = {name: np.array(out[name], copy=True) for name in self._outputs}  # the request's buffers are reused
        except Exception as exc:
            raise BackendError(f"OpenVINO failed: {exc}") from None
        finally:
            with self._lock:
                if self.compiled is not None:
                    self._free.setdefault(key, []).append(request)
        return values

    def _close(self) -> None:
        with self._lock:
            self._free.clear()
            self.compiled = None
