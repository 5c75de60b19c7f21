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
from conftest import SMALL_KWARGS
from vitrt.backends import tensorrt as trt_backend
from vitrt.errors import ArtifactError, BackendError, MetadataError
from vitrt.metadata import Metadata, sha256_file

ROOT = Path(__file__).resolve().parents[1]


# --- the API names exist in TensorRT's real bindings ----------------------------------------------
def _has(module, name: str) -> bool:
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


@pytest.mark.parametrize("module", ["tensorrt_lean", "tensorrt_rtx"])
def test_runtime_api_names_exist_in_the_real_bindings(module):
    trt = pytest.importorskip(module)
    from trt_api import RTX_RUNTIME_API, RUNTIME_API

    names = list(RUNTIME_API) + (list(RTX_RUNTIME_API) if module == "tensorrt_rtx" else [])
    missing = [n for n in names if not _has(trt, n)]
    assert not missing, f"{module} {trt.__version__} lacks {missing}"
    assert hasattr(trt.TensorIOMode, "INPUT") and hasattr(trt.Logger, "WARNING")
    if module == "tensorrt_rtx":
        assert {"UNSUPPORTED_CC", "VERSION_MISMATCH", "OLD_CUDA_DRIVER"} <= set(trt.EngineInvalidityDiagnostics.__members__)
        assert {"WHOLE_GRAPH_CAPTURE", "DISABLED"} <= set(trt.CudaGraphStrategy.__members__)


def test_every_runtime_call_is_listed():
    """Each trt./engine./context./runtime./config. attribute the backend uses appears in tests/trt_api.py."""
    from trt_api import RTX_RUNTIME_API, RUNTIME_API

    src = (ROOT / "vitrt/backends/tensorrt.py").read_text()
    used = set(re.findall(r"\bself\.(?:engine|context|runtime|runtime_cache)\.(\w+)", src))
    used |= set(re.findall(r"\b(?:engine|runtime|config)\.(\w+)\(", src))
    used |= {m for m in re.findall(r"\btrt\.(\w+)", src)}
    listed = {part for key in list(RUNTIME_API) + list(RTX_RUNTIME_API) for part in key.split(".")}
    assert used and used <= listed, f"not in trt_api: {sorted(used - listed)}"


def test_builder_names_exist_in_tensorrt_rtx():
    """The builder runs for real with TensorRT-RTX (tests/test_tensorrt_build.py); these are the names
    whose absence would break it on another release."""
    trt = pytest.importorskip("tensorrt_rtx")
    names = ["Builder.create_network", "Builder.create_builder_config", "Builder.create_optimization_profile",
             "Builder.build_serialized_network", "OnnxParser.parse_from_file", "OnnxParser.get_error",
             "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "INetworkDefinition.get_input",
             "INetworkDefinition.get_output", "IBuilderConfig.set_memory_pool_limit",
             "IBuilderConfig.set_compute_capability", "IBuilderConfig.num_compute_capabilities",
             "IOptimizationProfile.set_shape", "ComputeCapability.SM86", "ComputeCapability.SM89",
             "ComputeCapability.SM120", "MemoryPoolType.WORKSPACE", "BuilderFlag.TF32"]
    assert not [n for n in names if not _has(trt, n)]
    assert "SM90" not in trt.ComputeCapability.__members__  # no datacenter Hopper: see README "what runs where"


def test_builder_enums_exist_in_tensorrt_lean():
    """The builder's enums are shared with the runtime package, so they can be checked here too."""
    trt = pytest.importorskip("tensorrt_lean")
    assert hasattr(trt.BuilderFlag, "TF32") and hasattr(trt.MemoryPoolType, "WORKSPACE")
    assert hasattr(trt.ITimingCache, "serialize")


def test_builder_calls_are_listed():
    from trt_api import BUILDER_API

    src = (ROOT / "export/trt_build.py").read_text()
    used = set(re.findall(r"\b(?:builder|config|parser|profile|network)\.(\w+)", src)) | set(re.findall(r"\btrt\.(\w+)", src))
    listed = set(re.findall(r"\w+", " ".join(BUILDER_API)))
    assert used and used <= listed, f"not in trt_api.BUILDER_API: {sorted(used - listed)}"


# --- GPU detection ------------------------------------------------------------------------------
def test_gpu_count_matches_the_driver():
    """Whatever this machine is: no GPU (CI: cudaGetDeviceCount reports an error, not a crash) or a GPU."""
    from cuda.bindings import runtime as cudart

    from vitrt.cuda import gpu_count

    err, n = cudart.cudaGetDeviceCount()
    assert gpu_count() == (int(n) if err == cudart.cudaError_t.cudaSuccess else 0)


def test_gpu_count_reads_cuda(monkeypatch):
    from cuda.bindings import runtime as cudart

    from vitrt import cuda as gpu

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
                    "gpu": "NVIDIA H100 80GB HBM3", "flavour": "tensorrt", **plan_info}
    (tmp_path / "m.plan.json").write_text(json.dumps(data))
    return plan, Metadata.from_json_file(tmp_path / "m.plan.json")


H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
RTX4090 = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
RTX3090 = {"name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"}


def test_sidecar_checks(tmp_path, small_onnx):
    plan, meta = _plan_pair(tmp_path, small_onnx)
    trt_backend.check_sidecar(plan, meta, "10.14.1.48", H100)  # matching: no error
    trt_backend.check_sidecar(plan, meta, "10.14.1.49", H100)  # same major.minor.patch
    with pytest.raises(ArtifactError, match=r"built by TensorRT 10.14.1.48, this is TensorRT 10.15.0.*make engine"):
        trt_backend.check_sidecar(plan, meta, "10.15.0.1", H100)
    with pytest.raises(ArtifactError, match=r"compute capability 9.0 \(NVIDIA H100.*this GPU is 8.6.*make engine"):
        trt_backend.check_sidecar(plan, meta, "10.14.1.48", RTX3090)
    plan.write_bytes(b"another plan")
    with pytest.raises(ArtifactError, match="does not match its sidecar: sha256.*make engine"):
        trt_backend.check_sidecar(plan, meta, "10.14.1.48", H100)
    del meta.data["plan"]
    with pytest.raises(ArtifactError, match="not a vitrt plan sidecar"):
        trt_backend.check_sidecar(plan, meta, "10.14.1.48", H100)


def test_rtx_sidecar_checks_name_the_gpu_the_targets_and_the_fix(tmp_path, small_onnx):
    plan, meta = _plan_pair(tmp_path, small_onnx, flavour="tensorrt-rtx", tensorrt="1.7.1.116",
                            targets=["8.9", "12.0"], compute_capability=None, gpu=None)
    assert trt_backend.check_sidecar(plan, meta, "1.7.1.116", RTX4090)["flavour"] == "tensorrt-rtx"
    with pytest.raises(ArtifactError, match=r"TensorRT-RTX plan for sm_89, sm_120; this GPU, NVIDIA H100 80GB HBM3 "
                                            r"\(sm_90\), is not among them.*datacenter.*make engine TRT=tensorrt"):
        trt_backend.check_sidecar(plan, meta, "1.7.1.116", H100)
    with pytest.raises(ArtifactError, match=r"RTX 3090 \(sm_86\), is not among them.*make engine TARGETS=sm86"):
        trt_backend.check_sidecar(plan, meta, "1.7.1.116", RTX3090)
    with pytest.raises(ArtifactError, match=r"built by TensorRT-RTX 1.7.1.116, this is TensorRT-RTX 1.8.0"):
        trt_backend.check_sidecar(plan, meta, "1.8.0.1", RTX4090)
    meta.data["plan"]["targets"] = []
    with pytest.raises(ArtifactError, match="needs its target compute capabilities"):
        trt_backend.check_sidecar(plan, meta, "1.7.1.116", RTX4090)


def test_rtx_validity_check_with_the_real_enums():
    """get_engine_validity's answer becomes an error that says why and what to do (real tensorrt_rtx enums)."""
    trt = pytest.importorskip("tensorrt_rtx")
    D = trt.EngineInvalidityDiagnostics
    info = {"targets": ["8.9", "12.0"], "cuda_major": 13}

    def runtime(validity, bits):
        return types.SimpleNamespace(engine_header_size=4, get_engine_validity=lambda header: (validity, bits))

    trt_backend.check_validity(runtime(trt.EngineValidity.VALID, 0), trt, b"plan", Path("m.plan"), info, RTX4090)
    cases = [(int(D.UNSUPPORTED_CC), H100, r"UNSUPPORTED_CC \(plan targets sm_89, sm_120\).*make engine TRT=tensorrt"),
             (int(D.OLD_CUDA_DRIVER), RTX4090, r"OLD_CUDA_DRIVER.*update the NVIDIA driver \(the plan needs CUDA 13\)"),
             (int(D.VERSION_MISMATCH), RTX4090, r"VERSION_MISMATCH.*rebuild it with this TensorRT-RTX"),
             (0, RTX4090, r"invalid engine")]
    for bits, gpu, message in cases:
        with pytest.raises(ArtifactError, match=rf"TensorRT-RTX .* cannot run m.plan on {gpu['name']}.*{message}"):
            trt_backend.check_validity(runtime(trt.EngineValidity.INVALID, bits), trt, b"plan", Path("m.plan"), info, gpu)


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
    assert main(["info", str(plan), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["compute_capability"] == "9.0"
    assert main(["info", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "flavour    tensorrt 10.14.1.48" in text and "targets    sm_90 (built on NVIDIA H100" in text


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
    state = types.SimpleNamespace(recording=None)  # a list while a graph is being captured

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
        """Capturing records the kernels the enqueue would launch; a launch replays those records
        (with the shapes and addresses of capture time), as a CUDA graph does."""

        def __init__(self, stream, launch):
            log.append("capture")
            state.recording = []
            try:
                launch(stream)
            finally:
                self.kernels, state.recording = state.recording, None

        def launch(self):
            log.append("graph launch")
            for kernel in self.kernels:
                kernel()

        def close(self):
            log.append("graph closed")

    def htod(dst, src, nbytes, stream):
        mem[dst.ptr][:nbytes] = src.array.view(np.uint8)[:nbytes]

    def dtoh(dst, src, nbytes, stream):
        dst.array.view(np.uint8)[:nbytes] = mem[src.ptr][:nbytes]

    return FakeCuda(DeviceBuffer=DeviceBuffer, HostBuffer=HostBuffer, Stream=Stream, Graph=Graph,
                    memcpy_htod_async=htod, memcpy_dtoh_async=dtoh, check=lambda r, what="": None,
                    set_device=lambda d: log.append(f"device {d}") if d else None, state=state,
                    device_properties=lambda d: {"name": "Fake GPU", "compute_capability": "9.0"}), mem


class FakeContext:
    """'Runs' the model on fake device memory: logits[i] = mean pixel of image i, embedding[i] = i."""

    def __init__(self, mem, log, state, width=SMALL_KWARGS["embed_dim"]):
        self.mem, self.log, self.addr, self.shape, self.state, self.width = mem, log, {}, None, state, width

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.shape = shape
        return shape[0] <= 32

    def execute_async_v3(self, stream):
        n = self.shape[0]

        def kernel():
            self.log.append(f"kernel {n}")
            img = self.mem[self.addr["image"]][: n * 384 * 384 * 3].reshape(n, -1)
            self.mem[self.addr["logits"]].view(np.float32)[: n * 1000] = np.repeat(img.mean(1), 1000).astype(np.float32)
            w = self.width
            self.mem[self.addr["embedding"]].view(np.float32)[: n * w] = np.repeat(np.arange(n), w).astype(np.float32)

        self.log.append(f"enqueue {n}")
        if self.state.recording is not None:
            self.state.recording.append(kernel)  # captured, not run
        else:
            kernel()
        return True


def _fake_setup(tmp_path, small_onnx, monkeypatch, flavour="tensorrt"):
    log: list[str] = []
    fake_cuda, mem = _fake_cuda(log)
    trt = _fake_trt()
    engine = FakeEngine(width=SMALL_KWARGS["embed_dim"])  # the small ViT's sidecar (_plan_pair)
    engine.create_execution_context = lambda config=None: FakeContext(mem, log, fake_cuda.state)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine, engine_host_code_allowed=True)
    trt.Runtime = lambda logger: runtime
    info = {"tensorrt": trt.__version__}
    if flavour == "tensorrt-rtx":
        trt.__version__ = info["tensorrt"] = "1.7.1.116"
        info.update(flavour=flavour, targets=["8.9", "9.0"], compute_capability=None)
        trt.EngineValidity = types.SimpleNamespace(VALID=0, INVALID=2)
        trt.EngineInvalidityDiagnostics = types.SimpleNamespace(__members__={})
        trt.CudaGraphStrategy = types.SimpleNamespace(WHOLE_GRAPH_CAPTURE="whole", DISABLED="off")
        runtime.engine_header_size = 16
        runtime.get_engine_validity = lambda header: (log.append(f"validity {len(header)}") or 0, 0)

        class Cache:
            blob = b""

            def deserialize(self, blob):
                log.append(f"cache loaded {blob!r}")
                self.blob = blob
                return True

            def serialize(self):
                return self.blob + b"+jit"

        config = types.SimpleNamespace(create_runtime_cache=Cache, cuda_graph_strategy=None,
                                       set_runtime_cache=lambda cache: log.append("cache set") or True)
        engine.create_runtime_config = lambda: config
        engine.config = config
    plan, meta = _plan_pair(tmp_path, small_onnx, **info)
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: 1)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda flavour="tensorrt": trt)
    monkeypatch.setitem(sys.modules, "vitrt.cuda", fake_cuda)
    monkeypatch.setattr(vitrt, "cuda", fake_cuda, raising=False)
    return plan, meta, log, engine


@pytest.fixture
def fake_backend(tmp_path, small_onnx, monkeypatch):
    return _fake_setup(tmp_path, small_onnx, monkeypatch)[:3]


def test_rtx_backend_checks_validity_keeps_the_runtime_cache_and_lets_rtx_capture(tmp_path, small_onnx, monkeypatch):
    """TensorRT-RTX: validity asked first; the JIT cache is loaded from beside the plan, saved after each
    new batch size and on close (atomically); CUDA graphs are RTX's own (WHOLE_GRAPH_CAPTURE)."""
    plan, meta, log, engine = _fake_setup(tmp_path, small_onnx, monkeypatch, "tensorrt-rtx")
    cache = plan.with_name(plan.name + ".runtime-cache")
    cache.write_bytes(b"old")
    backend = trt_backend.TensorRTBackend(plan, meta)
    assert log[:3] == ["validity 16", "cache loaded b'old'", "cache set"]
    assert engine.config.cuda_graph_strategy == "whole" and backend.use_graphs is False
    assert backend.name == "tensorrt-rtx[Fake GPU]"
    log.clear()
    x = np.full((2, 384, 384, 3), 5, np.uint8)
    assert backend.run({"image": x})["logits"][0, 0] == 5
    assert "capture" not in log and cache.read_bytes() == b"old+jit"  # saved after the first batch-2 run
    cache.write_bytes(b"changed by someone")
    backend.run({"image": x})
    assert cache.read_bytes() == b"changed by someone"  # same shape: nothing new to save
    backend.close()
    assert cache.read_bytes() == b"old+jit" and not list(tmp_path.glob(".*tmp*"))
    _, _, _, engine = _fake_setup(tmp_path, small_onnx, monkeypatch, "tensorrt-rtx")
    trt_backend.TensorRTBackend(plan, meta, cuda_graphs=False).close()
    assert engine.config.cuda_graph_strategy == "off"


def test_backend_runs_and_captures_graphs_per_batch_size(fake_backend):
    plan, meta, log = fake_backend
    backend = trt_backend.TensorRTBackend(plan, meta)
    assert backend.runtime.engine_host_code_allowed is False
    rng = np.random.default_rng(0)
    x4 = rng.integers(0, 256, (4, 384, 384, 3), dtype=np.uint8)
    out = backend.run({"image": x4})
    np.testing.assert_allclose(out["logits"][:, 0], x4.reshape(4, -1).mean(1), rtol=1e-6)
    assert out["embedding"].shape == (4, 64) and out["logits"].shape == (4, 1000)
    # first run at batch 4: plain enqueue (its kernel runs), then the capture records one without running it
    assert log == ["enqueue 4", "kernel 4", "sync", "capture", "enqueue 4"]
    log.clear()
    x4b = rng.integers(0, 256, (4, 384, 384, 3), dtype=np.uint8)
    out = backend.run({"image": x4b})
    assert log == ["graph launch", "kernel 4", "sync"]  # second run: the graph's kernel, no enqueue, one sync
    np.testing.assert_allclose(out["logits"][:, 0], x4b.reshape(4, -1).mean(1), rtol=1e-6)  # on the new input
    log.clear()
    backend.run({"image": x4b[:1]})
    assert log == ["enqueue 1", "kernel 1", "sync", "capture", "enqueue 1"]  # a new batch size: its own graph
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
    assert "capture" not in log and log.count("enqueue 2") == 2 and log.count("kernel 2") == 2
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
        assert engine.infer(np.full((2, 384, 384, 3), 9, np.uint8))["logits"][1, 0] == 9
        assert len(engine.predict(photos[0])) == 5 and engine.embed(photos[:3]).shape == (3, 64)
        with pytest.raises(vitrt.InputError, match="dtype float32; expected uint8"):
            engine.infer(np.zeros((1, 384, 384, 3), np.float32))
        out = engine.infer(np.zeros((40, 384, 384, 3), np.uint8))  # > max batch 32: split in 32 + 8
        assert out["embedding"].shape == (40, 64) and out["embedding"][32, 0] == 0


# --- the builder's pure parts ---------------------------------------------------------------------
def test_probe_feature_detects_flavour_and_version():
    from export.trt_build import probe

    flag = types.SimpleNamespace(STRONGLY_TYPED=1)
    config = type("IBuilderConfig", (), {"set_compute_capability": None})

    def module(name, version, **extra):
        return types.SimpleNamespace(__name__=name, __version__=version, NetworkDefinitionCreationFlag=flag,
                                     IBuilderConfig=config, **extra)

    trt10, trt11 = probe(module("tensorrt", "10.14.1")), probe(module("tensorrt", "11.4.0"))
    assert trt10.network_flags == 1 << 1 and trt11.network_flags == 0
    assert trt10.timing_cache and trt10.needs_gpu and not trt10.targets and trt10.name == "tensorrt"
    rtx = probe(module("tensorrt_rtx", "1.7.1.116", ComputeCapability=object()))
    assert rtx.name == "tensorrt-rtx" and rtx.targets and not rtx.timing_cache and not rtx.needs_gpu
    assert rtx.network_flags == 1 << 1
    real = probe(pytest.importorskip("tensorrt_rtx"))
    assert real.name == "tensorrt-rtx" and real.targets and real.cuda_major == 13


def test_plan_names():
    from vitrt.artifacts import plan_path

    assert plan_path("a", "b16_384", "fp16") == Path("a/b16_384.plan")
    assert plan_path("a", "b16_384", "int8") == Path("a/b16_384_int8.plan")
    assert plan_path("a", "b16_384", "fp8") == Path("a/b16_384_fp8.plan")
    assert plan_path("a", "b16_384", "fp32") == Path("a/b16_384_fp32.plan")
