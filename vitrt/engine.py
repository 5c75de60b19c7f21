"""``vitrt.Engine``: one artifact, timm-exact preprocessing, predictions and embeddings; optionally
in-process dynamic batching (vitrt/batcher.py) and an asyncio API (vitrt/aio.py)."""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from .aio import AsyncEngine
from .artifacts import sidecar_path
from .errors import ArtifactError, InputError
from .metadata import Metadata
from .preprocess import (DEFAULT_MAX_PIXELS, ImageLike, check_max_pixels, is_single, normalize_nchw, resize_center_crop,
                         to_pil)


class Prediction(NamedTuple):
    index: int
    label: str
    prob: float



#: The backends of this process's Engines, and in a forked child those it inherited: kept there for the
#: child's life, so that neither close() nor garbage collection frees the parent's threads and memory in
#: it (Engine.close).
_LIVE_BACKENDS: "weakref.WeakSet" = weakref.WeakSet()
_INHERITED: list = []


def _keep(backend) -> None:
    """Keep ``backend`` for this (forked) process's life: listed, and one reference leaked on purpose,
    since a normal exit clears module globals and would free it then."""
    import ctypes

    if not any(b is backend for b in _INHERITED):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(backend))
        _INHERITED.append(backend)


def _after_fork_in_child() -> None:
    for backend in list(_LIVE_BACKENDS):
        _keep(backend)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Engine(AsyncEngine):
    """Runs a vitrt artifact: ``.onnx`` on ONNX Runtime, ``.plan`` on TensorRT; a folder (``artifacts/``)
    runs the best artifact in it for this machine (:mod:`vitrt.fleet`; ``path`` and ``choice`` say which
    and why).

    >>> engine = vitrt.Engine("artifacts/b16_384.onnx")
    >>> engine.predict("cat.jpg")[0]
    Prediction(index=281, label='tabby, tabby cat', prob=0.93)

    ``device`` picks the GPU (default 0): for a plan, and for an ``.onnx`` on ONNX Runtime's CUDA or
    TensorRT provider (their ``device_id``). ``providers`` (ONNX Runtime execution providers; default:
    the best present) and ``threads`` (its intra-op threads; default: the physical cores this process may
    run on, from its affinity mask and cgroup CPU quota, :func:`vitrt.cpu.usable_cores`) apply to
    ``.onnx`` only, as does ``backend`` ("onnxruntime" or "openvino"; default: ONNX Runtime with a
    GPU, else the runtime :func:`vitrt.fleet.cpu_backend` picks for this CPU; ``backend_why`` says
    why), ``cuda_graphs``
    (CUDA graph replay, default on) to ``.plan`` only: an argument the artifact's backend would ignore
    is refused. ``max_pixels`` refuses larger images before decoding them. Use as a context manager or
    call :meth:`close` to free the session and its buffers.

    ``batching=True`` coalesces concurrent calls (threads or coroutines) into backend batches of up to
    ``max_batch`` images (default: the artifact's); ``max_delay_ms`` and ``max_queue`` as in
    :class:`vitrt.Batcher` (defaults there, measured); every call then takes ``timeout_ms``. A full queue
    or a timeout raises :class:`vitrt.Overloaded`. ``batching=False`` (the default): every call runs its
    own batch, as before.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence | str | None = None, *, device: int | None = None,
                 cuda_graphs: bool | None = None, threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 backend: str | None = None, batching: bool = False, max_batch: int | None = None,
                 max_delay_ms: float | None = None, max_queue: int | None = None):
        self.backend = None
        self._batcher = None
        self._pid = os.getpid()  # a forked child's close() frees nothing of its parent's (close)
        self.threads = None  # ONNX Runtime's intra-op threads (.onnx only), and why that many
        self.threads_why = None
        self.backend_why = None  # why this runtime, for an .onnx
        self.choice = None  # why this file, when ``path`` was a folder
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"artifact path is a {type(path).__name__}; expected a str or Path to a .onnx or "
                             ".plan file built by `make engine`")
        self.path = Path(path)
        shown = os.fspath(self.path)
        shown = shown if len(shown) <= 80 else shown[:60] + f"... ({len(shown)} characters)"
        try:
            folder = self.path.is_dir()
        except (OSError, ValueError):
            folder = False
        if folder:  # an artifact set: the best file for this machine (vitrt.fleet)
            from .fleet import Machine, choose

            self.path, self.choice = choose(self.path, Machine.here(device or 0))
            logging.getLogger("vitrt").info("vitrt: %s chosen: %s", self.path.name, self.choice)
            shown = os.fspath(self.path)
        try:
            exists = self.path.is_file()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            raise ArtifactError(f"artifact path {shown!r} is not usable ({getattr(exc, 'strerror', None) or exc}); "
                                "expected a .onnx or .plan file built by `make engine`") from None
        if not exists:
            raise ArtifactError(f"artifact {shown!r} does not exist; expected a .onnx or .plan "
                                "file built by `make engine`")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 1):
            raise InputError(f"threads={threads!r}; expected a positive integer or None (the usable physical cores)")
        if device is not None and (isinstance(device, bool) or not isinstance(device, (int, np.integer)) or device < 0):
            raise InputError(f"device={device!r}; expected a GPU index (0, 1, ...) or None")
        if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
            raise InputError(f"cuda_graphs={cuda_graphs!r}; expected True, False or None")
        self.max_pixels = check_max_pixels(max_pixels)
        suffix = self.path.suffix.lower()
        if backend not in (None, "onnxruntime", "openvino"):
            raise InputError(f"backend={backend!r}; expected 'onnxruntime', 'openvino' or None (vitrt.fleet.cpu_backend)")
        if suffix == ".onnx":
            if cuda_graphs:
                raise InputError("cuda_graphs=True applies to .plan artifacts (TensorRT); ONNX Runtime's providers "
                                 "run an .onnx without vitrt's CUDA graphs: expected cuda_graphs=None or False")
            self.metadata = Metadata.from_onnx(self.path)
            check_graph_precision(self.path, self.metadata)
            if threads is None:
                from .cpu import usable_cores

                threads, self.threads_why = usable_cores()
            else:
                self.threads_why = "threads= given"
            self.threads = int(threads)
            backend = self._onnx_backend(backend, providers, device)
            if backend == "openvino":
                from .backends.openvino import OpenVINOBackend

                self.backend = OpenVINOBackend(self.path, self.metadata, threads=self.threads)
            else:
                from .backends.onnxruntime import OnnxRuntimeBackend

                self.backend = OnnxRuntimeBackend(self.path, self.metadata, providers, threads=self.threads,
                                                  device=device)
        elif suffix == ".plan":
            from .backends.tensorrt import TensorRTBackend

            for name, value in (("providers", providers), ("threads", threads), ("backend", backend)):
                if value is not None:
                    raise InputError(f"{name}={value!r} applies to .onnx artifacts (ONNX Runtime); a .plan runs on "
                                     f"TensorRT: expected {name}=None")
            self.metadata = Metadata.from_json_file(sidecar_path(self.path))
            self.backend = TensorRTBackend(self.path, self.metadata, device=device or 0,
                                           cuda_graphs=True if cuda_graphs is None else cuda_graphs)
        else:
            raise ArtifactError(f"artifact {shown!r} has suffix {suffix!r}; expected .onnx or .plan")
        _LIVE_BACKENDS.add(self.backend)
        self.labels = self.metadata.labels  # the artifact's class names, else ImageNet's, else class_<i>
        self._start_batching(batching, max_batch, max_delay_ms, max_queue)

    def _start_batching(self, batching: bool, max_batch, max_delay_ms, max_queue) -> None:
        if not isinstance(batching, bool):
            raise InputError(f"batching={batching!r}; expected True or False")
        given = {k: v for k, v in (("max_batch", max_batch), ("max_delay_ms", max_delay_ms), ("max_queue", max_queue))
                 if v is not None}
        if not batching:
            if given:
                raise InputError(f"{', '.join(given)} apply with batching=True; expected batching=True or none of them")
            return
        from .batcher import MAX_DELAY_MS, Batcher, weak_method

        limit = self.metadata.max_batch
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer))
                                      or not 1 <= max_batch <= limit):
            raise InputError(f"max_batch={max_batch!r}; expected an integer from 1 to the artifact's max batch {limit}")
        # the feeding thread holds the batcher, the batcher only a weak method of this Engine: one dropped
        # without close() is collected, and its finalizer closes the batcher (the thread then ends)
        self._batcher = Batcher(weak_method(self._run), int(max_batch or limit),
                                MAX_DELAY_MS if max_delay_ms is None else max_delay_ms, max_queue,
                                name=f"vitrt-batcher-{self.path.name}",
                                item=(self.metadata.item_shape, np.dtype(self.metadata.input_dtype)))
        self._close_batcher = weakref.finalize(self, self._batcher.close)
        self._close_batcher.atexit = False  # at exit the daemon thread just stops; no drain to wait for

    def _onnx_backend(self, backend: str | None, providers, device: int | None) -> str:
        """The runtime for this .onnx: ``backend`` as given, ONNX Runtime for ``providers`` or a GPU, else
        the CPU rule (:func:`vitrt.fleet.cpu_backend`); ``backend_why`` says why."""
        if backend == "openvino" and (providers is not None or device is not None):
            raise InputError(f"backend='openvino' runs on the CPU; providers={providers!r} and device={device!r} "
                             "are ONNX Runtime's: expected both None")
        if backend is not None:
            self.backend_why = "backend= given"
            return backend
        from .cuda import gpu_count

        if providers is not None or device is not None or gpu_count() > 0:
            self.backend_why = "ONNX Runtime's providers" + (" for the GPU" if providers is None else " as given")
            return "onnxruntime"
        from .fleet import Machine, cpu_backend

        backend, self.backend_why = cpu_backend(Machine.here(), self.metadata.precision)
        logging.getLogger("vitrt").info("vitrt: %s runs on %s: %s", self.path.name, backend, self.backend_why)
        return backend

    # --- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Drain the batcher's accepted requests (with batching), then free the backend. In a forked
        child the backend is marked closed but not freed: its thread pool, memory arenas and any GPU
        context are the parent's, and freeing them there can wait on a thread or a lock that did not come
        with the fork (the fork test's child hung in about one full suite in four, and freeing ONNX
        Runtime's session was the one native call it made); the child's exit reclaims them."""
        if self._batcher is not None:
            self._close_batcher()  # the finalizer: runs batcher.close once, now or at collection
        if self.backend is None:
            return
        if os.getpid() != self._pid:
            self.backend.closed = True
            _keep(self.backend)
        else:
            self.backend.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        threads = f", threads={self.threads} ({self.threads_why})" if self.threads else ""
        b = self._batcher
        batching = f", batching=(max_batch={b.max_batch}, max_delay_ms={1000 * b.max_delay:g}, " \
                   f"max_queue={b.max_queue})" if b else ""
        return (f"Engine({os.fspath(self.path)!r}, backend={self.backend.name}, "
                f"precision={self.metadata.precision}{threads}{batching})")

    def verify(self, reference: str | os.PathLike | None = None, gate: dict | None = None) -> dict:
        """Run this artifact on the parity set's inputs saved beside it (``NAME.reference.npz``) and
        apply the gate it passed at build time; returns the report (``report["passed"]``). Use it on
        the machine where the artifact serves: a TensorRT-RTX plan built on a CPU is first checked
        here. Needs no torch."""
        from .verify import verify

        return verify(self, reference, gate)

    # --- images -> batch ------------------------------------------------------------------
    def preprocess(self, image: ImageLike) -> np.ndarray:
        """The uint8 [384, 384, 3] crop timm's eval transform makes of ``image``."""
        return resize_center_crop(to_pil(image, self.max_pixels), self.metadata.data_config, self.max_pixels)

    def _batch(self, images: Any) -> np.ndarray:
        items = [images] if is_single(images) else list(images)
        if not items:
            raise InputError("got an empty list of images; expected at least one image")
        return np.stack([self.preprocess(im) for im in items])

    # --- raw inference --------------------------------------------------------------------
    def _check_batch(self, batch: Any) -> np.ndarray:
        meta = self.metadata
        if not isinstance(batch, np.ndarray):
            raise InputError(f"batch is a {type(batch).__name__}; expected a numpy array")
        if (meta.input_layout == "NCHW" and batch.dtype == np.uint8 and batch.ndim == 4
                and tuple(batch.shape[1:]) == (*meta.image_size, 3)):
            batch = normalize_nchw(batch, meta.data_config)  # preprocess()'s crops: normalized as the graph expects
        want = meta.input_dtype
        if batch.dtype != np.dtype(want):
            raise InputError(f"batch has dtype {batch.dtype}; expected {want} {meta.input_layout} "
                             f"[N, {', '.join(map(str, meta.item_shape))}]")
        if batch.ndim != 1 + len(meta.item_shape) or tuple(batch.shape[1:]) != meta.item_shape:
            raise InputError(f"batch has shape {tuple(batch.shape)}; expected [N, {', '.join(map(str, meta.item_shape))}] "
                             f"({meta.input_layout})")
        if batch.shape[0] < 1:
            raise InputError("batch is empty (N = 0); expected at least one item")
        return np.ascontiguousarray(batch)

    def infer(self, batch: np.ndarray, timeout_ms: float | None = None) -> dict[str, np.ndarray]:
        """Raw outputs (name -> array) for a preprocessed batch: uint8 [N, 384, 384, 3] crops (what
        :meth:`preprocess` makes; an NCHW artifact gets them normalized here), or for NCHW artifacts
        float32 [N, 3, 384, 384] already normalized. Batches larger than the artifact's ``max_batch``
        are split; outputs keep the input order. ``timeout_ms``: with batching only."""
        batch = self._check_batch(batch)
        if self._batcher is None:
            self._no_timeout(timeout_ms)
            return self._run(batch)
        from .batcher import run

        return run(self._batcher, batch, timeout_ms)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """A checked batch through the backend, split at the artifact's max batch (the batcher's run_batch)."""
        step = self.metadata.max_batch
        name = self.metadata.input_name
        parts = [self.backend.run({name: batch[i:i + step]}) for i in range(0, len(batch), step)]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _no_timeout(self, timeout_ms) -> None:
        if timeout_ms is not None:
            raise InputError(f"timeout_ms={timeout_ms!r} applies with batching=True (the time a request may wait in "
                             "the queue); expected Engine(..., batching=True) or timeout_ms=None")

    def _check_topk(self, topk) -> None:
        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or not 1 <= topk <= self.metadata.num_classes:
            raise InputError(f"topk={topk!r}; expected an integer from 1 to {self.metadata.num_classes}")

    # --- tasks ----------------------------------------------------------------------------
    def predict(self, images: Any, topk: int = 5, timeout_ms: float | None = None):
        """Top-``topk`` :class:`Prediction` s (softmax over the classes), highest first.

        One image -> a list of predictions; a list of images -> a list of such lists."""
        self._check_topk(topk)
        single = is_single(images)
        return self._finish_predict(self.infer(self._batch(images), timeout_ms), single, topk)

    def embed(self, images: Any, timeout_ms: float | None = None) -> np.ndarray:
        """float32 embedding: (width,) for one image, (N, width) for a list (timm's pre-logits features;
        width 768 for ViT-B)."""
        single = is_single(images)
        return self._finish_embed(self.infer(self._batch(images), timeout_ms), single)

    def top_k(self, logits: np.ndarray, topk: int = 5) -> list[Prediction]:
        """The top-``topk`` :class:`Prediction` s of one image's logits (what :meth:`predict` returns for
        it), e.g. from :meth:`infer`'s output when the embedding is wanted from the same run."""
        self._check_topk(topk)
        logits = np.asarray(logits)
        if logits.shape != (self.metadata.num_classes,):
            raise InputError(f"logits of shape {logits.shape}; expected ({self.metadata.num_classes},): one image's")
        return top_k(softmax(logits[None])[0], int(topk), self.labels)

    def _finish_predict(self, out: dict[str, np.ndarray], single: bool, topk: int):
        results = [top_k(p, int(topk), self.labels) for p in softmax(out["logits"])]
        return results[0] if single else results

    def _finish_embed(self, out: dict[str, np.ndarray], single: bool) -> np.ndarray:
        emb = out["embedding"].astype(np.float32, copy=False)
        return emb[0] if single else emb


def check_graph_precision(path: Path, meta: Metadata) -> None:
    """The metadata's precision must be what the graph holds (vitrt.onnx_meta.graph_precision)."""
    from .onnx_meta import graph_precision

    got = graph_precision(path)
    said = "int8" if meta.precision == "int8-cpu" else meta.precision
    if got != said:
        raise ArtifactError(f"{path.name}: the metadata says precision {meta.precision}, the graph holds {got} "
                            "(its ops and initializer types). The graph is the truth: expected metadata that matches it; rebuild it "
                            "with `make engine`")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 for stable probabilities."""
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, k: int, labels: Sequence[str]) -> list[Prediction]:
    idx = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(int(i), labels[int(i)], float(probs[i])) for i in idx]
