"""The TensorRT side, on a machine without a GPU: API names, GPU detection, sidecars, buffer sizing,
the backend's run/capture logic against fakes, and `make engine` without TensorRT."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import vitrt
from vitrt.backends import tensorrt as trt_backend
from vitrt.errors import ArtifactError, BackendError, MetadataError
from vitrt.metadata import Metadata, sha256_file

ROOT = Path(__file__).resolve().parents[1]


# --- the API names exist in TensorRT's real bindings ----------------------------------------------
def test_runtime_api_names_exist_in_tensorrt_lean():
    trt = pytest.importorskip("tensorrt_lean")
    from vitrt.trt_api import RUNTIME_API

    for name in RUNTIME_API:
        obj = trt
        for part in name.split("."):
            assert hasattr(obj, part), f"tensorrt_lean {trt.__version__} has no {name}"
            obj = getattr(obj, part)
    assert hasattr(trt.TensorIOMode, "INPUT") and hasattr(trt.Logger, "WARNING")


def test_every_runtime_call_is_listed():
    """Each trt./engine./context./runtime. attribute the backend uses appears in vitrt/trt_api.py."""
    from vitrt.trt_api import RUNTIME_API

    src = (ROOT / "vitrt/backends/tensorrt.py").read_text()
    used = set(re.findall(r"\bself\.(?:engine|context|runtime)\.(\w+)", src))
    used |= set(re.findall(r"\bengine\.(\w+)\(", src))
    used |= {m for m in re.findall(r"\btrt\.(\w+)", src)}
    listed = {part for key in RUNTIME_API for part in key.split(".")}
    assert used and used <= listed, f"not in trt_api.RUNTIME_API: {sorted(used - listed)}"


def test_builder_enums_exist_in_tensorrt_lean():
    """The builder's enums are shared with the runtime package, so they can be checked here too."""
    trt = pytest.importorskip("tensorrt_lean")
    assert hasattr(trt.BuilderFlag, "TF32") and hasattr(trt.MemoryPoolType, "WORKSPACE")
    assert hasattr(trt.ITimingCache, "serialize")


def test_builder_calls_are_listed():
    from vitrt.trt_api import BUILDER_API

    src = (ROOT / "export/trt_build.py").read_text()
    used = set(re.findall(r"\b(?:builder|config|parser|profile)\.(\w+)", src)) | set(re.findall(r"\btrt\.(\w+)", src))
    listed = set(re.findall(r"\w+", " ".join(BUILDER_API)))
    assert used and used <= listed, f"not in trt_api.BUILDER_API: {sorted(used - listed)}"


# --- GPU detection ------------------------------------------------------------------------------
def test_gpu_count_here_is_zero():
    from vitrt.gpu import gpu_count

    assert gpu_count() == 0  # CI and dev machines have no GPU: cudaGetDeviceCount reports an error, not a crash


def test_gpu_count_reads_cuda(monkeypatch):
    from cuda.bindings import runtime as cudart

    from vitrt import gpu

    for result, expected in [((cudart.cudaError_t.cudaSuccess, 2), 2),
                             ((cudart.cudaError_t.cudaErrorInsufficientDriver, None), 0),
                             ((cudart.cudaError_t.cudaErrorNoDevice, 0), 0)]:
        monkeypatch.setattr(cudart, "cudaGetDeviceCount", lambda r=result: r)
        gpu.gpu_count.cache_clear()
        assert gpu.gpu_count() == expected
    gpu.gpu_count.cache_clear()


def test_cuda_check_raises_with_the_call_name():
    from cuda.bindings import runtime as cudart

    from vitrt.cuda import check

    assert check((cudart.cudaError_t.cudaSuccess, 42), "x") == 42
    with pytest.raises(BackendError, match="cudaMalloc\\(8\\) failed: cudaErrorMemoryAllocation"):
        check((cudart.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc(8)")


# --- sidecars ------------------------------------------------------------------------------------
def _plan_pair(tmp_path: Path, small_onnx: Path, **plan_info) -> tuple[Path, Metadata]:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not really a plan, but bytes with a hash")
    data = Metadata.from_onnx(small_onnx).data
    data["batch"] = {"min": 1, "opt": 8, "max": 32, "dynamic": True}
    data["plan"] = {"sha256": sha256_file(plan), "tensorrt": "10.14.1.48", "compute_capability": "9.0",
                    "gpu": "NVIDIA H100 80GB HBM3", **plan_info}
    (tmp_path / "m.plan.json").write_text(json.dumps(data))
    return plan, Metadata.from_json_file(tmp_path / "m.plan.json")


def test_sidecar_checks(tmp_path, small_onnx):
    plan, meta = _plan_pair(tmp_path, small_onnx)
    trt_backend.check_sidecar(plan, meta, "10.14.1.48", "9.0")  # matching: no error
    trt_backend.check_sidecar(plan, meta, "10.14.1.49", "9.0")  # same major.minor.patch
    with pytest.raises(ArtifactError, match=r"built by TensorRT 10.14.1.48, this is TensorRT 10.15.0.*make engine"):
        trt_backend.check_sidecar(plan, meta, "10.15.0.1", "9.0")
    with pytest.raises(ArtifactError, match=r"compute capability 9.0 \(NVIDIA H100.*this GPU is 8.6.*make engine"):
        trt_backend.check_sidecar(plan, meta, "10.14.1.48", "8.6")
    plan.write_bytes(b"another plan")
    with pytest.raises(ArtifactError, match="does not match its sidecar: sha256.*make engine"):
        trt_backend.check_sidecar(plan, meta, "10.14.1.48", "9.0")
    del meta.data["plan"]
    with pytest.raises(ArtifactError, match="not a vitrt plan sidecar"):
        trt_backend.check_sidecar(plan, meta, "10.14.1.48", "9.0")


def test_engine_on_plan_without_gpu(tmp_path, small_onnx):
    plan, _ = _plan_pair(tmp_path, small_onnx)
    with pytest.raises(BackendError, match="no NVIDIA GPU found.*run the .onnx artifact"):
        vitrt.Engine(plan)
    (tmp_path / "m.plan.json").unlink()
    with pytest.raises(MetadataError, match="m.plan.json' is missing; expected it beside the artifact"):
        vitrt.Engine(plan)
    assert "tensorrt" not in sys.modules  # refused before TensorRT could crash the process


def test_vitrt_info_reads_plan_sidecar(tmp_path, small_onnx, capsys):
    from vitrt.cli import main

    plan, _ = _plan_pair(tmp_path, small_onnx)
    assert main(["info", str(plan)]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["compute_capability"] == "9.0"


# --- buffer sizing and the run loop, against a fake engine -----------------------------------------
class FakeTRT(types.SimpleNamespace):
    pass


def _fake_trt():
    trt = FakeTRT()
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: dt
    trt.__version__ = "10.14.1.48"
    return trt


class FakeEngine:
    """Speaks TensorRT's ICudaEngine tensor API for image -> logits, embedding."""

    def __init__(self, max_batch=32, classes=1000, width=768):
        self.tensors = [("image", "in", np.uint8, (-1, 384, 384, 3)), ("logits", "out", np.float32, (-1, classes)),
                        ("embedding", "out", np.float32, (-1, width))]
        self.max_batch = max_batch
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, i):
        return self.tensors[i][0]

    def _t(self, name):
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_mode(self, name):
        return self._t(name)[1]

    def get_tensor_dtype(self, name):
        return self._t(name)[2]

    def get_tensor_shape(self, name):
        return self._t(name)[3]

    def get_tensor_profile_shape(self, name, profile):
        item = self._t(name)[3][1:]
        return [(1, *item), (8, *item), (self.max_batch, *item)]


def test_tensor_specs_size_buffers_for_max_batch():
    specs = {s.name: s for s in trt_backend.tensor_specs(FakeEngine(), _fake_trt(), 32)}
    assert specs["image"].is_input and specs["image"].max_shape == (32, 384, 384, 3)
    assert specs["image"].max_nbytes == 32 * 384 * 384 * 3
    assert specs["logits"].max_nbytes == 32 * 1000 * 4 and specs["embedding"].max_nbytes == 32 * 768 * 4
    assert specs["logits"].nbytes(3) == 3 * 1000 * 4
    with pytest.raises(ArtifactError, match="profile allows batch 16 for 'image', metadata says 32"):
        trt_backend.tensor_specs(FakeEngine(max_batch=16), _fake_trt(), 32)
    engine = FakeEngine()
    engine.tensors[0] = ("image", "in", np.uint8, (-1, -1, 384, 3))
    with pytest.raises(ArtifactError, match="only the batch dimension may be dynamic"):
        trt_backend.tensor_specs(engine, _fake_trt(), 32)


class FakeCuda(types.SimpleNamespace):
    """vitrt.cuda's interface over numpy: 'device' memory is a dict of arrays keyed by pointer."""


def _fake_cuda(log):
    mem: dict[int, np.ndarray] = {}

    class DeviceBuffer:
        def __init__(self, nbytes):
            self.ptr, self.nbytes = 1000 + len(mem), nbytes
            mem[self.ptr] = np.zeros(nbytes, np.uint8)

        def close(self):
            log.append("free")

    class HostBuffer:
        def __init__(self, nbytes, dtype):
            self.array = np.zeros(nbytes // np.dtype(dtype).itemsize, dtype)

        def __getitem__(self, k):
            return self.array[k]

        def __setitem__(self, k, v):
            self.array[k] = v

        def close(self):
            log.append("free")

    class Stream:
        handle = "stream"

        def synchronize(self):
            log.append("sync")

        def close(self):
            log.append("stream closed")

    class Graph:
        def __init__(self, stream, launch):
            log.append("capture")
            self.fn, self.stream = launch, stream

        def launch(self):
            log.append("graph launch")
            self.fn(self.stream)

        def close(self):
            log.append("graph closed")

    def htod(dst, src, nbytes, stream):
        mem[dst.ptr][:nbytes] = src.array.view(np.uint8)[:nbytes]

    def dtoh(dst, src, nbytes, stream):
        dst.array.view(np.uint8)[:nbytes] = mem[src.ptr][:nbytes]

    return FakeCuda(DeviceBuffer=DeviceBuffer, HostBuffer=HostBuffer, Stream=Stream, Graph=Graph,
                    memcpy_htod_async=htod, memcpy_dtoh_async=dtoh, check=lambda r, what="": None,
                    _cudart=lambda: types.SimpleNamespace(cudaSetDevice=lambda d: None),
                    device_properties=lambda d: {"name": "Fake GPU", "compute_capability": "9.0"}), mem


class FakeContext:
    """'Runs' the model on fake device memory: logits[i] = mean pixel of image i, embedding[i] = i."""

    def __init__(self, mem, log):
        self.mem, self.log, self.addr, self.shape = mem, log, {}, None

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.shape = shape
        return shape[0] <= 32

    def execute_async_v3(self, stream):
        self.log.append(f"enqueue {self.shape[0]}")
        n = self.shape[0]
        img = self.mem[self.addr["image"]][: n * 384 * 384 * 3].reshape(n, -1)
        self.mem[self.addr["logits"]].view(np.float32)[: n * 1000] = np.repeat(img.mean(1), 1000).astype(np.float32)
        self.mem[self.addr["embedding"]].view(np.float32)[: n * 768] = np.repeat(np.arange(n), 768).astype(np.float32)
        return True


@pytest.fixture
def fake_backend(tmp_path, small_onnx, monkeypatch):
    log: list[str] = []
    fake_cuda, mem = _fake_cuda(log)
    trt = _fake_trt()
    engine = FakeEngine()
    engine.create_execution_context = lambda: FakeContext(mem, log)
    trt.Logger = types.SimpleNamespace(WARNING=2)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine,
                                                       engine_host_code_allowed=True)
    plan, meta = _plan_pair(tmp_path, small_onnx, tensorrt=trt.__version__)
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: 1)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: trt)
    monkeypatch.setitem(sys.modules, "vitrt.cuda", fake_cuda)
    monkeypatch.setattr(vitrt, "cuda", fake_cuda, raising=False)
    return plan, meta, log


def test_backend_runs_and_captures_graphs_per_batch_size(fake_backend):
    plan, meta, log = fake_backend
    backend = trt_backend.TensorRTBackend(plan, meta)
    assert backend.runtime.engine_host_code_allowed is False
    rng = np.random.default_rng(0)
    x4 = rng.integers(0, 256, (4, 384, 384, 3), dtype=np.uint8)
    out = backend.run({"image": x4})
    np.testing.assert_allclose(out["logits"][:, 0], x4.reshape(4, -1).mean(1), rtol=1e-6)
    assert out["embedding"].shape == (4, 768) and out["logits"].shape == (4, 1000)
    assert log[-2:] == ["sync", "capture"]  # first run at batch 4: plain enqueue, then capture
    log.clear()
    x4b = rng.integers(0, 256, (4, 384, 384, 3), dtype=np.uint8)
    out = backend.run({"image": x4b})
    assert log == ["graph launch", "enqueue 4", "sync"]  # second run: the graph, one synchronization
    np.testing.assert_allclose(out["logits"][:, 0], x4b.reshape(4, -1).mean(1), rtol=1e-6)
    log.clear()
    backend.run({"image": x4b[:1]})
    assert log == ["enqueue 1", "sync", "capture"]  # a new batch size gets its own graph
    backend.close()
    assert "stream closed" in log and "graph closed" in log and log.count("free") == 6
    with pytest.raises(BackendError, match="closed"):
        backend.run({"image": x4b})
    backend.close()


def test_backend_without_graphs_and_with_failed_capture(fake_backend, monkeypatch):
    plan, meta, log = fake_backend
    backend = trt_backend.TensorRTBackend(plan, meta, cuda_graphs=False)
    x = np.zeros((2, 384, 384, 3), np.uint8)
    backend.run({"image": x})
    backend.run({"image": x})
    assert "capture" not in log and log.count("enqueue 2") == 2
    backend.close()

    import vitrt as v

    def broken_graph(stream, launch):
        raise BackendError("cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated")

    monkeypatch.setattr(v.cuda, "Graph", broken_graph)
    backend = trt_backend.TensorRTBackend(plan, meta)
    backend.run({"image": x})
    assert backend.use_graphs is False  # stays on plain enqueues
    out = backend.run({"image": x})
    assert out["logits"].shape == (2, 1000)
    backend.close()


def test_backend_is_thread_safe(fake_backend):
    """Calls from several threads are serialized by the backend's lock: each gets its own result."""
    from concurrent.futures import ThreadPoolExecutor

    plan, meta, log = fake_backend
    backend = trt_backend.TensorRTBackend(plan, meta)
    batches = [np.full((1 + i % 3, 384, 384, 3), i, np.uint8) for i in range(24)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda b: backend.run({"image": b}), batches))
    for i, (b, o) in enumerate(zip(batches, outs)):
        assert o["logits"].shape == (len(b), 1000) and np.all(o["logits"] == i)
    backend.close()


def test_engine_on_fake_plan_matches_onnx_api(fake_backend, photos):
    """predict/embed/infer on a .plan go through the same Engine code as .onnx (same checks, same splits)."""
    plan, meta, log = fake_backend
    with vitrt.Engine(plan) as engine:
        assert engine.backend.name == "tensorrt[Fake GPU]"
        assert len(engine.predict(photos[0])) == 5 and engine.embed(photos[:3]).shape == (3, 768)
        with pytest.raises(vitrt.InputError, match="dtype float32; expected uint8"):
            engine.infer(np.zeros((1, 384, 384, 3), np.float32))
        out = engine.infer(np.zeros((40, 384, 384, 3), np.uint8))  # > max batch 32: split in 32 + 8
        assert out["embedding"].shape == (40, 768) and out["embedding"][32, 0] == 0


# --- the builder's pure parts ---------------------------------------------------------------------
def test_network_flags_by_version():
    from export.trt_build import network_flags

    trt10 = types.SimpleNamespace(__version__="10.14.1", NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1))
    trt11 = types.SimpleNamespace(__version__="11.4.0", NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1))
    assert network_flags(trt10) == 1 << 1 and network_flags(trt11) == 0


def test_plan_names():
    from export.trt_build import plan_path_for

    assert plan_path_for(Path("a/b16_384_fp16.onnx"), "fp16") == Path("a/b16_384.plan")
    assert plan_path_for(Path("a/b16_384_int8.onnx"), "int8") == Path("a/b16_384_int8.plan")
    assert plan_path_for(Path("a/b16_384_fp8.onnx"), "fp8") == Path("a/b16_384_fp8.plan")
    assert plan_path_for(Path("a/b16_384.onnx"), "fp32") == Path("a/b16_384_fp32.plan")
