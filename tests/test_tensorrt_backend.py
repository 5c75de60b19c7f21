"""The TensorRT backend's run loop, CUDA graphs, error paths and lifetime, against the strict fake GPU
of tests/fake_gpu.py (vitrt/cuda.py's real code runs on a fake cuda-python runtime)."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import types

import numpy as np
import pytest

import vitrt
from conftest import SMALL_KWARGS
from fake_gpu import E, FakeCudart, FakeEngine, fake_trt
from test_tensorrt_cpu import _plan_pair
from vitrt import cuda
from vitrt.backends import tensorrt as trt_backend
from vitrt.errors import ArtifactError, BackendError

WIDTH = SMALL_KWARGS["embed_dim"]


def _rtx(trt, engine, log):
    trt.__version__ = "1.7.1.116"
    trt.EngineValidity = types.SimpleNamespace(VALID=0, INVALID=2)
    trt.EngineInvalidityDiagnostics = types.SimpleNamespace(__members__={})
    trt.CudaGraphStrategy = types.SimpleNamespace(WHOLE_GRAPH_CAPTURE="whole", DISABLED="off")
    trt.runtime.engine_header_size = 16
    trt.runtime.get_engine_validity = lambda header: (log.append(f"validity {len(header)}") or 0, 0)

    class Cache:
        blob = b""

        def deserialize(self, blob):
            log.append(f"cache loaded {blob!r}")
            self.blob = blob
            return True

        def serialize(self):
            return self.blob + b"+jit"

    engine.config = types.SimpleNamespace(create_runtime_cache=Cache, cuda_graph_strategy=None,
                                          set_runtime_cache=lambda cache: log.append("cache set") or True)
    engine.create_runtime_config = lambda: engine.config


@pytest.fixture
def gpu(tmp_path, small_onnx, monkeypatch):
    """A fake one-GPU machine: (make(flavour, devices) -> (plan, meta, engine, trt), cudart)."""
    cudart = FakeCudart()
    monkeypatch.setattr(cuda, "_cudart", lambda: cudart)
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: cudart.devices)

    def make(flavour="tensorrt"):
        engine = FakeEngine(cudart, width=WIDTH)
        trt = fake_trt(engine)
        info = {"tensorrt": trt.__version__}
        if flavour == "tensorrt-rtx":
            _rtx(trt, engine, engine.log)
            info.update(flavour=flavour, tensorrt=trt.__version__, targets=["8.9", "9.0"], compute_capability=None)
        monkeypatch.setattr(trt_backend, "import_tensorrt", lambda flavour="tensorrt": trt)
        plan, meta = _plan_pair(tmp_path, small_onnx, **info)
        return plan, meta, engine, trt

    return make, cudart


def _images(rng, n):
    return rng.integers(0, 256, (n, 384, 384, 3), dtype=np.uint8)


def _expect(out, x):
    """The fake model's outputs for ``x``, exactly."""
    flat = x.reshape(len(x), -1)
    np.testing.assert_array_equal(out["logits"][:, 0], flat.mean(1).astype(np.float32))
    np.testing.assert_array_equal(out["embedding"], np.repeat(flat[:, :1].astype(np.float32), WIDTH, 1))


# --- the run loop and CUDA graphs -----------------------------------------------------------------
def test_graph_replay_is_right_after_shape_changes_a_b_a(gpu):
    """Batches 3, 1, 3, 1 with new data each time: each shape's graph replays on its own context, whose
    per-shape setup no other shape can overwrite. With one context, the third run replays batch 3's
    graph on batch 1's setup and returns stale rows."""
    make, cudart = gpu
    plan, meta, engine, _ = make()
    backend = trt_backend.TensorRTBackend(plan, meta)
    rng = np.random.default_rng(0)
    for n in (3, 1, 3, 1, 3):
        x = _images(rng, n)
        _expect(backend.run({"image": x}), x)
    assert sorted(backend.graphs) == [1, 3]
    # two plain runs (one per shape) and their captures; every later run is a replay
    assert engine.log == ["enqueue 3", "enqueue 3 (captured)", "enqueue 1", "enqueue 1 (captured)"]
    assert cudart.pending() == 0
    backend.close()
    assert cudart.live() == {"mem": 0, "host": 0, "streams": 0, "graphs": 0, "execs": 0}


def test_engine_infer_splits_replay_their_graphs(gpu, photos):
    """Engine.infer sends 32, then the rest: 32 -> 8 -> 32 -> 8, all correct, through the Engine API."""
    make, cudart = gpu
    plan, _, engine, _ = make()
    rng = np.random.default_rng(1)
    with vitrt.Engine(plan) as e:
        assert e.backend.name == "tensorrt[Fake GPU]"
        for _ in range(2):
            x = _images(rng, 40)
            _expect(e.infer(x), x)
        assert sorted(e.backend.graphs) == [8, 32]
        assert len(e.predict(photos[0])) == 5 and e.embed(photos[:3]).shape == (3, WIDTH)
        with pytest.raises(vitrt.InputError, match="dtype float32; expected uint8"):
            e.infer(np.zeros((1, 384, 384, 3), np.float32))


def test_no_graphs_one_context_every_shape(gpu):
    make, cudart = gpu
    plan, meta, engine, _ = make()
    backend = trt_backend.TensorRTBackend(plan, meta, cuda_graphs=False)
    rng = np.random.default_rng(2)
    for n in (2, 5, 2):
        x = _images(rng, n)
        _expect(backend.run({"image": x}), x)
    assert not backend.graphs and len(engine.contexts) == 1 and "captured" not in str(engine.log)
    backend.close()


def test_capture_survives_another_library_on_the_default_stream(gpu, caplog):
    """vitrt's stream is non-blocking: work on the legacy default stream during a capture (another
    thread's PyTorch or ONNX Runtime) neither invalidates the capture nor fails that other work."""
    make, cudart = gpu
    plan, meta, engine, _ = make()
    others = []
    engine.on_enqueue = lambda ctx, stream: others.append(cudart.legacy_default_stream_launch()) \
        if stream.capturing is not None else None
    backend = trt_backend.TensorRTBackend(plan, meta)
    x = _images(np.random.default_rng(3), 2)
    backend.run({"image": x})
    assert others == [E.cudaSuccess] and 2 in backend.graphs and backend.use_graphs
    _expect(backend.run({"image": x}), x)
    backend.close()


def test_a_failed_capture_is_logged_and_leaves_nothing_behind(gpu, caplog):
    make, cudart = gpu
    plan, meta, engine, _ = make()
    cudart.fail["cudaGraphInstantiate"] = (1, E.cudaErrorInvalidValue)
    backend = trt_backend.TensorRTBackend(plan, meta)
    x = _images(np.random.default_rng(4), 2)
    with caplog.at_level(logging.WARNING, logger="vitrt"):
        _expect(backend.run({"image": x}), x)
    assert not backend.use_graphs and "CUDA graphs turned off for m.plan: capturing batch 2 failed" in caplog.text
    assert "cudaGraphInstantiate failed: cudaErrorInvalidValue" in caplog.text
    assert cudart.live()["graphs"] == 0 and cudart.live()["execs"] == 0  # the captured graph was destroyed
    _expect(backend.run({"image": x}), x)
    backend.close()


def test_graph_capture_raises_the_first_error_and_ends_the_capture(gpu):
    _, cudart = gpu
    stream = cuda.Stream()

    def launch(s):
        cudart.cudaStreamSynchronize(s.handle)  # illegal under capture: invalidates it, EndCapture fails too
        raise ValueError("the enqueue failed")

    with pytest.raises(ValueError, match="the enqueue failed"):
        cuda.Graph(stream, launch)
    assert cudart.streams[stream.handle].capturing is None and cudart.live()["graphs"] == 0
    cudart.fail["cudaStreamEndCapture"] = (1, E.cudaErrorStreamCaptureInvalidated)
    with pytest.raises(BackendError, match="cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated"):
        cuda.Graph(stream, lambda s: None)
    stream.close()


# --- error paths ------------------------------------------------------------------------------------
def test_an_error_after_the_input_copy_leaves_the_stream_idle(gpu):
    """execute_async_v3 fails after the async input copy: the stream is drained before the error is
    raised, so the next call's input never races the old copy; the next call is right."""
    make, cudart = gpu
    plan, meta, engine, _ = make()
    backend = trt_backend.TensorRTBackend(plan, meta, cuda_graphs=False)
    rng = np.random.default_rng(5)
    engine.contexts[0].execute_async_v3 = lambda stream: False
    with pytest.raises(BackendError, match="execute_async_v3 returned False"):
        backend.run({"image": _images(rng, 2)})
    assert cudart.pending() == 0
    del engine.contexts[0].execute_async_v3
    x = _images(rng, 2)
    _expect(backend.run({"image": x}), x)
    backend.close()


def test_a_failed_init_frees_what_it_allocated(gpu):
    make, cudart = gpu
    plan, meta, engine, _ = make()
    cudart.fail["cudaMallocHost"] = (2, E.cudaErrorMemoryAllocation)
    with pytest.raises(BackendError, match="cudaMallocHost.*cudaErrorMemoryAllocation"):
        trt_backend.TensorRTBackend(plan, meta)
    assert cudart.live() == {"mem": 0, "host": 0, "streams": 0, "graphs": 0, "execs": 0}
    engine.address_ok = False
    with pytest.raises(BackendError, match="set_tensor_address failed"):
        trt_backend.TensorRTBackend(plan, meta, cuda_graphs=False)
    assert cudart.live() == {"mem": 0, "host": 0, "streams": 0, "graphs": 0, "execs": 0}


def test_close_after_a_sticky_error_attempts_every_free(gpu):
    make, cudart = gpu
    plan, meta, engine, _ = make()
    backend = trt_backend.TensorRTBackend(plan, meta)
    backend.run({"image": _images(np.random.default_rng(6), 2)})
    cudart.sticky = E.cudaErrorIllegalAddress
    cudart.calls.clear()
    with pytest.raises(BackendError, match="cudaErrorIllegalAddress"):
        backend.close()
    calls = cudart.calls
    # 3 I/O buffers + the contexts' scratch; 3 pinned buffers; 1 graph; the stream: every one attempted
    assert calls.count("cudaFree") == 4 and calls.count("cudaFreeHost") == 3 and calls.count("cudaStreamDestroy") == 1
    assert calls.count("cudaGraphExecDestroy") == 1 and calls.count("cudaGraphDestroy") == 1
    assert calls[:2] == ["cudaGetDevice", "cudaSetDevice"] and backend.closed
    with pytest.raises(BackendError, match="closed"):
        backend.run({"image": _images(np.random.default_rng(6), 2)})


def test_close_destroys_contexts_before_their_memory(gpu):
    make, cudart = gpu
    plan, meta, engine, _ = make()
    backend = trt_backend.TensorRTBackend(plan, meta)
    backend.run({"image": _images(np.random.default_rng(7), 1)})
    order = []
    free = cudart.cudaFree
    cudart.cudaFree = lambda ptr: order.append("free") or free(ptr)
    import weakref

    weakref.finalize(engine.contexts[0], order.append, "context gone")
    engine.contexts.clear()  # the fake's own list: only the backend holds the context now
    backend.close()
    assert order[0] == "context gone" and order.count("free") == 4


# --- lifetime ------------------------------------------------------------------------------------
def test_an_unclosed_engine_is_freed_by_its_finalizer(gpu):
    make, cudart = gpu
    plan, meta, engine, _ = make()
    backend = trt_backend.TensorRTBackend(plan, meta)
    backend.run({"image": _images(np.random.default_rng(8), 2)})
    assert cudart.live()["graphs"] == 1
    del backend
    gc.collect()
    assert cudart.live() == {"mem": 0, "host": 0, "streams": 0, "graphs": 0, "execs": 0}


def test_the_finalizer_makes_no_cuda_call_at_interpreter_shutdown(gpu, monkeypatch):
    make, cudart = gpu
    plan, meta, engine, _ = make()
    backend = trt_backend.TensorRTBackend(plan, meta)
    assert backend._finalizer.atexit is False  # not run by atexit: the driver may be gone by then
    res = backend._res
    backend._finalizer.detach()
    cudart.calls.clear()
    finalizing = sys.is_finalizing
    monkeypatch.setattr(sys, "is_finalizing", lambda: True)
    trt_backend._finalize(res)
    assert cudart.calls == []
    monkeypatch.setattr(sys, "is_finalizing", finalizing)
    trt_backend._finalize(res)
    assert "cudaFreeHost" in cudart.calls and cudart.live()["host"] == 0


def test_the_callers_current_device_is_restored(gpu):
    make, cudart = gpu
    cudart.devices = 2
    plan, meta, engine, _ = make()
    cudart.cudaSetDevice(1)
    backend = trt_backend.TensorRTBackend(plan, meta, device=0)
    assert cudart.cudaGetDevice()[1] == 1
    backend.run({"image": _images(np.random.default_rng(9), 1)})
    assert cudart.cudaGetDevice()[1] == 1
    backend.close()
    assert cudart.cudaGetDevice()[1] == 1


# --- TensorRT-RTX --------------------------------------------------------------------------------
def test_rtx_validity_runtime_cache_and_its_own_graphs(gpu, monkeypatch):
    """TensorRT-RTX: validity asked first; the JIT cache is loaded from beside the plan and saved after
    each new batch size, from a helper thread once the request has returned, and on close (atomically);
    CUDA graphs are RTX's own (WHOLE_GRAPH_CAPTURE) in one context."""
    make, cudart = gpu
    plan, meta, engine, _ = make("tensorrt-rtx")
    cache = plan.with_name(plan.name + ".runtime-cache")
    cache.write_bytes(b"old")
    backend = trt_backend.TensorRTBackend(plan, meta)
    assert engine.log[:3] == ["validity 16", "cache loaded b'old'", "cache set"]
    assert engine.config.cuda_graph_strategy == "whole" and backend.use_graphs is False
    assert backend.name == "tensorrt-rtx[Fake GPU]" and len(engine.contexts) == 1

    from vitrt import atomic

    gate, wrote, write = threading.Event(), [], atomic.write_bytes
    monkeypatch.setattr(atomic, "write_bytes", lambda path, data: (gate.wait(10), wrote.append(data), write(path, data)))
    rng = np.random.default_rng(10)
    for n in (2, 1, 2):
        x = _images(rng, n)
        _expect(backend.run({"image": x}), x)  # returns while the cache write waits: off the request path
    assert wrote == [] and cache.read_bytes() == b"old"
    gate.set()
    backend.close()
    assert wrote == [b"old+jit"] * 3 and cache.read_bytes() == b"old+jit"  # two new sizes, then close
    assert not list(plan.parent.glob(".*tmp*"))
    monkeypatch.setattr(atomic, "write_bytes", write)
    _, _, engine, _ = make("tensorrt-rtx")
    trt_backend.TensorRTBackend(plan, meta, cuda_graphs=False).close()
    assert engine.config.cuda_graph_strategy == "off"


# --- arguments the artifact's backend would ignore --------------------------------------------------
def test_backend_arguments_are_honoured_or_refused(gpu, small_onnx, monkeypatch):
    make, cudart = gpu
    plan, _, _, _ = make()
    for kwargs in ({"providers": ["CPUExecutionProvider"]}, {"threads": 2}):
        with pytest.raises(vitrt.InputError, match=r"applies to .onnx artifacts .*expected (providers|threads)=None"):
            vitrt.Engine(plan, **kwargs)
    with pytest.raises(vitrt.InputError, match="cuda_graphs=True applies to .plan"):
        vitrt.Engine(small_onnx, cuda_graphs=True)
    vitrt.Engine(small_onnx, cuda_graphs=False).close()

    from vitrt.backends import onnxruntime as ort_backend

    monkeypatch.setattr(ort_backend, "gpu_count", lambda: 2)
    both = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_backend.with_device(both, 1) == [("TensorrtExecutionProvider", {"device_id": "1"}),
                                                ("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    assert ort_backend.with_device(both, None) == both
    with pytest.raises(vitrt.InputError, match="device_id=0; expected one GPU index"):
        ort_backend.with_device([("CUDAExecutionProvider", {"device_id": 0})], 1)
    with pytest.raises(vitrt.InputError, match="device=1 picks a GPU, but the providers are"):
        ort_backend.with_device(["CPUExecutionProvider"], 1)
    with pytest.raises(BackendError, match="this machine has 2 NVIDIA GPU"):
        ort_backend.with_device(both, 2)
    monkeypatch.setattr(ort_backend, "gpu_count", lambda: 0)
    with pytest.raises(BackendError, match="expected device=None"):
        vitrt.Engine(small_onnx, device=0)


def test_tensor_specs_size_buffers_for_max_batch():
    engine = FakeEngine()
    trt = fake_trt(engine)
    specs = {s.name: s for s in trt_backend.tensor_specs(engine, trt, 32)}
    assert specs["image"].is_input and specs["image"].max_shape == (32, 384, 384, 3)
    assert specs["image"].max_nbytes == 32 * 384 * 384 * 3
    assert specs["logits"].max_nbytes == 32 * 1000 * 4 and specs["embedding"].max_nbytes == 32 * 768 * 4
    assert specs["logits"].nbytes(3) == 3 * 1000 * 4
    with pytest.raises(ArtifactError, match="profile allows batch 16 for 'image', metadata says 32"):
        trt_backend.tensor_specs(FakeEngine(max_batch=16), trt, 32)
    engine.tensors[0] = ("image", "in", np.uint8, (-1, -1, 384, 3))
    with pytest.raises(ArtifactError, match="only the batch dimension may be dynamic"):
        trt_backend.tensor_specs(engine, trt, 32)


def test_backend_is_thread_safe(gpu):
    """Calls from several threads are serialized by the backend's lock: each gets its own result."""
    from concurrent.futures import ThreadPoolExecutor

    make, cudart = gpu
    plan, meta, _, _ = make()
    backend = trt_backend.TensorRTBackend(plan, meta)
    batches = [np.full((1 + i % 3, 384, 384, 3), i, np.uint8) for i in range(24)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda b: backend.run({"image": b}), batches))
    for i, (b, o) in enumerate(zip(batches, outs)):
        assert o["logits"].shape == (len(b), 1000) and np.all(o["logits"] == i)
    backend.close()
