"""The TensorRT side, on a machine without a GPU: API names, GPU detection, sidecars, buffer sizing,
the backend's run/capture logic against fakes, and `make engine` without TensorRT."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest

import vitrt
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


#: The backend's local names for TensorRT objects, and the binding class each stands for.
TRT_OBJECTS = {"engine": "ICudaEngine", "context": "IExecutionContext", "runtime": "Runtime",
               "config": "IRuntimeConfig", "runtime_config": "IRuntimeConfig", "runtime_cache": "IRuntimeCache"}


def _trt_uses(src: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Every ``trt.X.Y`` path, and every (object, attribute) used on a TensorRT object, read from the
    syntax tree: calls, properties and assignments alike (``config.cuda_graph_strategy = ...``)."""
    import ast

    rooted, members = set(), set()
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        chain.reverse()
        name = base.id if isinstance(base, ast.Name) else None
        while name in ("self", "res") and chain:  # self.trt.X, res.engine.X
            name, chain = chain[0], chain[1:]
        if chain and name == "trt":
            rooted.add(".".join(chain))
        elif chain and name in TRT_OBJECTS:
            members.add((name, chain[0]))
    return rooted, members


def test_every_runtime_name_is_listed_and_real():
    """Each TensorRT name the backend uses appears in tests/trt_api.py and exists in a real binding
    (tensorrt_lean for full TensorRT, tensorrt_rtx for RTX-only names)."""
    from trt_api import RTX_RUNTIME_API, RUNTIME_API

    rooted, members = _trt_uses("\n".join((ROOT / f"vitrt/backends/{m}.py").read_text() for m in ("tensorrt", "plan")))
    assert ("config", "cuda_graph_strategy") in members and ("context", "set_device_memory") in members
    listed = {part for key in list(RUNTIME_API) + list(RTX_RUNTIME_API) for part in key.split(".")}
    used = {r.split(".")[0] for r in rooted} | {m for _, m in members}
    assert used <= listed, f"not in trt_api: {sorted(used - listed)}"
    modules = [m for m in (pytest.importorskip("tensorrt_lean"), pytest.importorskip("tensorrt_rtx"))]
    missing = [r for r in rooted if not any(_has(m, r) for m in modules)]
    missing += [f"{TRT_OBJECTS[o]}.{a}" for o, a in members if not any(_has(m, f"{TRT_OBJECTS[o]}.{a}") for m in modules)]
    assert not missing, f"not in the real bindings: {missing}"


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

    try:
        for result, expected in [((cudart.cudaError_t.cudaSuccess, 2), 2),
                                 ((cudart.cudaError_t.cudaErrorInsufficientDriver, None), 0),
                                 ((cudart.cudaError_t.cudaErrorNoDevice, 0), 0)]:
            monkeypatch.setattr(cudart, "cudaGetDeviceCount", lambda r=result: r)
            gpu.gpu_count.cache_clear()
            assert gpu.gpu_count() == expected
    finally:  # a failed assertion must not leave a faked count cached for the other tests
        monkeypatch.undo()
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


def test_engine_on_plan_without_gpu(tmp_path, small_onnx, monkeypatch):
    """No GPU (made so on any host): refused before TensorRT is imported, which would crash the process."""
    plan, _ = _plan_pair(tmp_path, small_onnx)
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: 0)
    imported = []
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda flavour="tensorrt": imported.append(flavour))
    with pytest.raises(BackendError, match="no NVIDIA GPU found.*run the .onnx artifact"):
        vitrt.Engine(plan)
    (tmp_path / "m.plan.json").unlink()
    with pytest.raises(MetadataError, match="m.plan.json' is missing; expected it beside the artifact"):
        vitrt.Engine(plan)
    assert imported == []


def test_vitrt_info_reads_plan_sidecar(tmp_path, small_onnx, capsys):
    from vitrt.cli import main

    plan, _ = _plan_pair(tmp_path, small_onnx)
    assert main(["info", str(plan), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["compute_capability"] == "9.0"
    assert main(["info", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "flavour    tensorrt 10.14.1.48" in text and "targets    sm_90 (built on NVIDIA H100" in text


# The backend's run loop, graphs, error paths and lifetime: tests/test_tensorrt_backend.py (strict fake GPU).


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
    assert real.name == "tensorrt-rtx" and real.targets and real.cuda_major in (12, 13)  # the -cu12 or -cu13 wheel
    from export.trt_build import cuda_major

    assert real.cuda_major == cuda_major("tensorrt-rtx")


def test_plan_names():
    from vitrt.artifacts import plan_path

    assert plan_path("a", "b16_384", "fp16") == Path("a/b16_384.plan")
    assert plan_path("a", "b16_384", "int8") == Path("a/b16_384_int8.plan")
    assert plan_path("a", "b16_384", "fp8") == Path("a/b16_384_fp8.plan")
    assert plan_path("a", "b16_384", "fp32") == Path("a/b16_384_fp32.plan")
