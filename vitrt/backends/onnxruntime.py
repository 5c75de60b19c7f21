"""ONNX Runtime backend: TensorRT EP, then CUDA EP, then CPU, or the providers you pass.

CPU session options are ONNX Runtime's defaults (all graph optimizations, spinning on) but for the
intra-op threads, which ``Engine`` sets to the physical cores the process may use (affinity and cgroup
quota, vitrt/cpu.py; ONNX Runtime counts the machine's cores, which oversubscribes a container with a
CPU quota). On the int8-cpu artifact, spinning off and the "extended" level were none faster than the
defaults, 1 thread took 1.8x as long and the "basic" level 3x (`python -m benchmarks.ort_options`,
docs/benchmarks.md).

The session's real inputs and outputs are compared with the artifact's metadata when it loads: the
graph is the truth, and metadata that contradicts it is refused (ArtifactError), so that a wrong
input shape is never blamed on the caller's image later.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import numpy as np

from ..cuda import gpu_count
from ..errors import ArtifactError, BackendError, InputError
from ..metadata import Metadata
from .base import Backend, check_io

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = PREFERENCE[:2]
_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16"}


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendError("onnxruntime is not installed; expected `pip install 'vitrt[cpu]'` "
                           "(or onnxruntime-gpu) to run .onnx artifacts") from None
    return ort


def default_providers() -> list[str]:
    """The best providers present: GPU ones only when a GPU is there (ORT lists them regardless)."""
    available = set(_ort().get_available_providers())
    have_gpu = gpu_count() > 0
    return [p for p in PREFERENCE if p in available and (have_gpu or p not in GPU_PROVIDERS)]


def with_device(providers: list, device: int | None) -> list:
    """The providers with ``device_id`` set on the GPU ones (CUDA, TensorRT). ``device`` None leaves
    them as given (ONNX Runtime's default is GPU 0); a GPU index with no GPU provider, or against a
    ``device_id`` already in a provider's options, is an error."""
    if device is None:
        return providers
    n = gpu_count()
    if n == 0 or device >= n:
        raise BackendError(f"device={device}; this machine has {n} NVIDIA GPU(s)"
                           + (f": expected 0..{n - 1}" if n else ": expected device=None (ONNX Runtime's CPU provider)"))
    out, gpu = [], False
    for p in providers:
        name, options = (p[0], dict(p[1])) if isinstance(p, (list, tuple)) else (p, {})
        if name in GPU_PROVIDERS:
            gpu = True
            if str(options.setdefault("device_id", str(device))) != str(device):
                raise InputError(f"device={device} but {name}'s options say device_id={options['device_id']}; "
                                 "expected one GPU index")
            out.append((name, options))
        else:
            out.append(p)
    if not gpu:
        raise InputError(f"device={device} picks a GPU, but the providers are {[o if isinstance(o, str) else o[0] for o in out]}; "
                         "expected a CUDA or TensorRT provider, or device=None")
    return out


def check_providers(providers: Any) -> list:
    """``providers`` as ONNX Runtime takes them: names, or (name, options) pairs; a single name is one
    provider. Unknown names, and GPU providers without a GPU, are errors (ORT would fall back to the
    CPU with a banner on stdout)."""
    if isinstance(providers, str):
        providers = [providers]
    if not isinstance(providers, (list, tuple)) or not providers:
        raise InputError(f"providers={providers!r}; expected a list of ONNX Runtime provider names")
    available = _ort().get_available_providers()
    names = []
    for p in providers:
        name = p[0] if isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[1], dict) else p
        if not isinstance(name, str):
            raise InputError(f"provider {p!r}; expected a name or a (name, options dict) pair")
        names.append(name)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BackendError(f"providers {unknown} are not in this onnxruntime; expected some of {available}")
    if gpu_count() == 0 and any(n in GPU_PROVIDERS for n in names):
        raise BackendError(f"providers {[n for n in names if n in GPU_PROVIDERS]} need an NVIDIA GPU and "
                           "cudaGetDeviceCount reports none; expected CPUExecutionProvider here")
    return list(providers)


def check_graph(session, meta: Metadata, path: str) -> None:
    """The session's inputs and outputs must be what the metadata says (names, dtypes, shapes)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    got_in = [(i.name, _ORT_TYPES.get(i.type, i.type), [d if isinstance(d, int) else "N" for d in i.shape])
              for i in inputs]
    got_out = {o.name: (_ORT_TYPES.get(o.type, o.type), [d if isinstance(d, int) else "N" for d in o.shape][1:])
               for o in outputs}
    check_io(got_in, got_out, meta, path)


#: The first ONNX Runtime release seen to round FP16 QuantizeLinear on the CPU as ONNX says (1.24 and 1.29
#: truncate toward zero: microsoft/onnxruntime#18576, fixed by PR #32452; export/ort_fp16_q.py).
FP16_QUANTIZE_FIXED = (1, 32)


def _warn_fp16_quantize(ort, metadata: Metadata, provider: str) -> None:
    """Warn when an int8/fp8 variant with FP16 around its Q/DQ (made for TensorRT) runs on a CPU provider
    that truncates FP16 QuantizeLinear: its outputs are then off (photos cosine 0.62 on trained weights)."""
    import logging

    p = metadata.data.get("precision_pass") or {}
    if (metadata.precision not in ("int8", "fp8") or p.get("high_precision_dtype") != "fp16"
            or p.get("evaluation_copy") or provider != "CPUExecutionProvider"):
        return
    try:
        version = tuple(int(x) for x in ort.__version__.split(".")[:2])
    except ValueError:
        return
    if version < FP16_QUANTIZE_FIXED:
        logging.getLogger("vitrt").warning(
            "ONNX Runtime %s's CPU QuantizeLinear truncates FP16 inputs (microsoft/onnxruntime#18576): this %s "
            "variant, made for TensorRT, computes wrong values here; expected onnxruntime>=%d.%d (pip install "
            "'vitrt[cpu]'), or the int8-cpu artifact on a CPU", ort.__version__, metadata.precision,
            *FP16_QUANTIZE_FIXED)


#: ONNX Runtime's session key for its slower u8 x u8 kernels where u8 x s8 overflows (the comment in
#: :func:`session_options`; onnxruntime_session_options_config_keys.h, kOrtSessionOptionsAvx2PrecisionMode).
X64_QUANT_PRECISION = "session.x64quantprecision"
#: The precisions whose graphs ONNX Runtime runs with u8 x s8 kernels (int8 Q/DQ).
QUANTIZED_U8S8 = ("int8", "int8-cpu")


def session_options(ort, precision: str, threads: int | None = None, session_config: dict[str, str] | None = None,
                    saturates: bool | None = None):
    """The ``ort.SessionOptions`` vitrt runs a ``precision`` artifact with (``session_config`` over its own).
    ``saturates``: whether this CPU's u8 x s8 products saturate (default: ONNX Runtime's kernel asked
    once, :func:`_saturates_here`)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    config = dict(session_config or {})
    if saturates is None:  # only a quantized graph has u8 x s8 products to ask about
        saturates = precision in QUANTIZED_U8S8 and _saturates_here()
    if saturates:
        # Exact 8-bit products where they would saturate: without VNNI or AMX (AVX2 alone) ONNX Runtime's
        # u8 x s8 kernel adds pairs of products in 16 bits (VPMADDUBSW), which clips; the toy ViT's int8-cpu
        # fell from 0.9997 to 0.982 photo cosine on an emulated AVX2 CPU (docs/precision.md). Only there:
        # ONNX Runtime 1.32 also rewrites the weights to u8 on a VNNI CPU (slower kernels, seen in its
        # optimized graph), which 1.24 did not (tests/test_onnxruntime_backend.py checks both).
        config.setdefault(X64_QUANT_PRECISION, "1")
    if precision == "fp8":
        # ORT's CPU optimizer rewrites FP8 Q/DQ pairs into an invalid graph (shared/TOOLCHAIN-NOTES.md)
        config.setdefault("session.disable_quant_qdq", "1")
    for key, value in config.items():
        opts.add_session_config_entry(key, value)
    return opts


#: The probe: x [1, 2] -> QuantizeLinear (u8, scale 1/255) -> DequantizeLinear -> MatMul with a
#: DequantizeLinear'd s8 weight [2, 1] of 127s (scale 1/127); opset 13, IR 7. x = 1 gives 2.0 exactly;
#: a u8 x s8 kernel that adds its pair in 16 bits (255 * 127 * 2 = 64770 > 32767) gives 1.012.
#: tests/test_onnxruntime_backend.py parses these bytes and checks they are that graph.
PROBE = ("CAc6gwIKIgoBeAoDeF9zCgN4X3oSA3hfcSIOUXVhbnRpemVMaW5lYXIKJwoDeF9xCgN4X3MKA3hfehIEeF9kcSIQRGVxdWFu"
         "dGl6ZUxpbmVhcgonCgN3X3EKA3dfcwoDd196EgR3X2RxIhBEZXF1YW50aXplTGluZWFyChcKBHhfZHEKBHdfZHESAXkiBk1h"
         "dE11bBIBcyoPCAIIARADQgN3X3FKAn9/Kg0QAUIDd19zSgQEAgE8KgoQA0IDd196SgEAKg0QAUIDeF9zSgSBgIA7KgoQAkID"
         "eF96SgEAWhMKAXgSDgoMCAESCAoCCAEKAggCYhMKAXkSDgoMCAESCAoCCAEKAggBQgQKABAN")


@functools.cache
def _saturates_here() -> bool:
    """Whether this ONNX Runtime's u8 x s8 kernel saturates on this CPU: the probe, run once with ORT's
    defaults. ORT picks its kernels by CPUID, which /proc/cpuinfo need not show (a CPU emulator shows the
    host's flags; macOS has no /proc): asking the kernel itself is what matches. A probe that cannot run
    falls back to vitrt.cpu.int8_saturates."""
    import base64
    import logging

    ort = _ort()
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(base64.b64decode(PROBE), opts, providers=["CPUExecutionProvider"])
        y = float(session.run(None, {"x": np.ones((1, 2), np.float32)})[0].ravel()[0])
    except Exception as exc:  # ORT's own error types
        from ..cpu import int8_saturates, read_cpuinfo

        logging.getLogger("vitrt").debug("the u8 x s8 probe did not run (%s); reading /proc/cpuinfo", exc)
        return int8_saturates(read_cpuinfo())
    return abs(y - 2.0) > 1e-3


class OnnxRuntimeBackend(Backend):
    def __init__(self, path: str | os.PathLike, metadata: Metadata, providers: Sequence | None = None,
                 threads: int | None = None, session_config: dict[str, str] | None = None, device: int | None = None):
        ort = _ort()
        opts = session_options(ort, metadata.precision, threads, session_config)
        chosen = with_device(check_providers(providers) if providers else default_providers(), device)
        try:
            self.session = ort.InferenceSession(os.fspath(path), opts, providers=chosen)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"ONNX Runtime could not load {os.fspath(path)!r}: {exc}") from None
        check_graph(self.session, metadata, os.fspath(path))
        self.providers = self.session.get_providers()
        _warn_fp16_quantize(ort, metadata, self.providers[0])
        self.name = f"onnxruntime[{self.providers[0]}]"
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session
        if session is None:
            raise BackendError("this engine is closed; expected an open one: create a new vitrt.Engine")
        try:
            values = session.run(self._outputs, feed)  # ORT sessions are thread-safe for run()
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed: {exc}") from None
        return dict(zip(self._outputs, values))

    def _close(self) -> None:
        self.session = None
