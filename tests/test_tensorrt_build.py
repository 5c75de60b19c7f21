"""Real TensorRT builds on this machine, with TensorRT-RTX's builder and ONNX parser (no GPU needed):
every exported graph parses and builds; the plans' sidecars, profiles, targets and `vitrt info`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_KWARGS, _quiet, export_small
from vitrt.errors import BuildError
from vitrt.metadata import Metadata

trt = pytest.importorskip("tensorrt_rtx")


@pytest.fixture(scope="module")
def rtx():
    from export.trt_build import load

    flavour = load("tensorrt-rtx")
    assert not isinstance(flavour, str), flavour
    return flavour


def _build(onnx_path: Path, rtx, targets=("8.6", "8.9", "12.0"), **kw) -> dict:
    from export.trt_build import build_plan

    plan = onnx_path.with_suffix(".plan")
    build_plan(onnx_path, plan, rtx, targets=list(targets), log=_quiet, **kw)
    return json.loads(plan.with_name(plan.name + ".json").read_text())


class CastAfterTranspose:
    """The graph vitrt exported before: the uint8 image goes into a Transpose, then a Cast."""

    @staticmethod
    def forward(self, image):
        x = image.permute(0, 3, 1, 2).to(__import__("torch").float32).div(255.0)
        x = (x - self.mean) / self.std
        emb = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model.get_classifier()(emb), emb


def test_the_parser_rejects_a_uint8_transpose_and_accepts_vitrts_graph(tmp_path, small_model, rtx, monkeypatch):
    """TensorRT takes UINT8 only into a Cast: the old graph fails the real parser; today's builds."""
    from export.graph import ImageModel

    good = export_small(tmp_path / "cast_first.onnx", small_model, verify=False)
    assert _build(good, rtx)["plan"]["io"]["image"]["dtype"] == "uint8"
    monkeypatch.setattr(ImageModel, "forward", CastAfterTranspose.forward)
    old = export_small(tmp_path / "transpose_first.onnx", small_model, verify=False)
    with pytest.raises(BuildError, match=r"(?s)tensorrt-rtx.s ONNX parser rejected transpose_first.onnx: .*node_permute: first input has type UInt8"):
        _build(old, rtx)


@pytest.mark.parametrize("variant", [{"input_format": "float32"}, {"tokens": True}])
def test_graph_options_parse_and_build(tmp_path, small_model, rtx, variant):
    path = export_small(tmp_path / "v.onnx", small_model, verify=False, **variant)
    io = _build(path, rtx)["plan"]["io"]
    if variant.get("tokens"):
        n = (384 // 16) ** 2 + 1
        assert io["tokens"] == {"dtype": "float32", "shape": [-1, n, SMALL_KWARGS["embed_dim"]], "input": False}
    else:
        assert io["image"] == {"dtype": "float32", "shape": [-1, 3, 384, 384], "input": True}


def test_every_precision_is_a_real_plan(small_build, rtx, capsys):
    """`make engine PRECISION=all TRT=tensorrt-rtx`: TensorRT-RTX plans of fp16, int8 and fp8, with sidecars
    that say what they are and that parity was not run here (the build never runs an RTX plan)."""
    from export.trt_build import cuda_major
    from vitrt.cli import main

    paths, logs = small_build
    assert {"plan_fp16", "plan_int8", "plan_fp8"} <= set(paths)
    assert paths["plan_fp16"].name == "m.plan" and paths["plan_int8"].name == "m_int8.plan"
    for precision in ("fp16", "int8", "fp8"):
        plan = paths[f"plan_{precision}"]
        assert plan.stat().st_size > 1 << 20  # the serialized engine, weights included (2.5-3.2 MB here)
        side = Metadata.from_json_file(plan.with_name(plan.name + ".json")).data
        info = side["plan"]
        assert info["flavour"] == "tensorrt-rtx" and info["tensorrt"] == trt.__version__ and info["cuda_major"] == cuda_major("tensorrt-rtx")
        assert info["targets"] == (["8.9", "12.0"] if precision == "fp8" else ["8.6", "8.9", "12.0"])
        assert info["gpu"] is None and side["precision"] == precision
        assert side["batch"] == {"min": 1, "opt": 8, "max": 32, "dynamic": True}
        assert info["io"] == {"image": {"dtype": "uint8", "shape": [-1, 384, 384, 3], "input": True},
                              "logits": {"dtype": "float32", "shape": [-1, 1000], "input": False},
                              "embedding": {"dtype": "float32", "shape": [-1, SMALL_KWARGS["embed_dim"]], "input": False}}
        assert side["parity"]["status"] == "not run" and f"vitrt verify {plan.name}" in side["parity"]["note"]
        assert side["reference"] == {"file": "m.reference.npz"} and side["gate"]
        report = json.loads(plan.with_name(plan.name + ".parity.json").read_text())
        assert report["passed"] is None
        assert main(["info", str(plan)]) == 0
        text = capsys.readouterr().out
        assert "flavour    tensorrt-rtx " + trt.__version__ in text
        assert ("sm_89, sm_120" if precision == "fp8" else "sm_86, sm_89, sm_120") in text
    assert (paths["fp32"].parent / "m.reference.npz").is_file()
    assert not list(paths["fp32"].parent.glob(".*"))  # no temp files or scratch folders left


def test_plan_io_must_match_the_metadata(tmp_path, small_onnx, rtx):
    """The graph is the truth: a metadata that says 10 classes for a 1000-class graph stops the build."""
    from export.onnx_export import set_metadata
    import onnx

    model = onnx.load(small_onnx)
    meta = Metadata.from_onnx(small_onnx).data
    meta["outputs"]["logits"]["shape"] = ["N", 10]
    meta["model"]["num_classes"], meta["labels"] = 10, None  # a consistent lie: only the graph contradicts it
    set_metadata(model, meta)
    onnx.save(model, tmp_path / "lying.onnx")
    with pytest.raises(BuildError, match=r"TensorRT parsed lying.onnx into I/O .*expected .*'shape': \[-1, 10\]"):
        _build(tmp_path / "lying.onnx", rtx)


def test_targets(rtx):
    from export.trt_build import parse_targets, targets_for

    assert parse_targets("sm86, sm_89,12.0,120") == ["8.6", "8.9", "12.0"]
    assert targets_for("fp8", ["8.6", "8.9", "12.0"]) == ["8.9", "12.0"]
    assert targets_for("int8", ["7.5", "8.6"]) == ["7.5", "8.6"]
    with pytest.raises(BuildError, match="TARGETS entry 'h100'; expected compute capabilities like sm86"):
        parse_targets("h100")


def test_fp8_needs_sm89_and_sm90_is_refused(small_build, rtx, tmp_path):
    paths, _ = small_build
    with pytest.raises(BuildError, match=r"fp8 needs compute capability >= 8.9; targets \['8.6'\]"):
        _build(paths["fp8"], rtx, targets=["8.6"])
    with pytest.raises(BuildError, match=r"cannot target sm_90.*full TensorRT, built on that GPU"):
        _build(paths["fp16"], rtx, targets=["9.0"])


def test_fp8_without_an_sm89_target_stops_the_build(small_build, tmp_path):
    """`make engine PRECISION=fp8 TARGETS=sm86`: an error, not a build that exits 0 without the plan."""
    import shutil

    from conftest import build_opts
    from export.build import build

    paths, _ = small_build
    out = tmp_path / "copy"
    shutil.copytree(paths["fp32"].parent, out)  # the fp8 ONNX is reused; only the plan step runs
    with pytest.raises(BuildError, match=r"m_fp8.plan: fp8 needs compute capability >= 8.9 and TARGETS has none \(8.6\)"):
        build(build_opts(out, precision="fp8", calib_dir="builtin", trt="tensorrt-rtx", targets="sm86"), log=_quiet)


def test_the_real_runtime_judges_a_plan_for_this_machine(small_build):
    """TensorRT-RTX's own runtime on the plan for sm_86/89/120: without a GPU, INVALID with no reason
    bits (vitrt asks cudaGetDeviceCount first anyway); on a GPU among the targets, VALID (or
    SUBOPTIMAL); on any other (an H100 is sm_90), INVALID with UNSUPPORTED_CC."""
    from cuda.bindings import runtime as cudart

    paths, _ = small_build
    data = paths["plan_fp16"].read_bytes()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    validity, bits = runtime.get_engine_validity(data[: runtime.engine_header_size])
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        assert validity == trt.EngineValidity.INVALID and bits == 0
        return
    from vitrt.cuda import device_properties

    if device_properties(0)["compute_capability"] in ("8.6", "8.9", "12.0"):
        assert validity in (trt.EngineValidity.VALID, trt.EngineValidity.SUBOPTIMAL), (validity, bits)
    else:
        assert validity == trt.EngineValidity.INVALID and int(bits) & int(trt.EngineInvalidityDiagnostics.UNSUPPORTED_CC)


def test_make_engine_builds_rtx_plans_and_plan_no_skips_them(tmp_path):
    """The Makefile's knobs reach the builder: TRT, TARGETS, and PLAN=no."""
    from test_make_and_triton import _make

    kwargs = json.dumps(SMALL_KWARGS).replace(" ", "")
    out = _make("engine", f"ARTIFACTS={tmp_path}", "WEIGHTS=random", "PRECISION=fp16", "TRT=tensorrt-rtx", "TARGETS=sm89",
                f"EXPORT_ARGS=--model-kwargs '{kwargs}'")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    side = json.loads((tmp_path / "b16_384.plan.json").read_text())
    assert side["plan"]["targets"] == ["8.9"] and "TensorRT plans: tensorrt-rtx" in out.stdout
    other = tmp_path / "no_plans"
    out = _make("engine", f"ARTIFACTS={other}", "WEIGHTS=random", "PRECISION=fp32", "PLAN=no",
                f"EXPORT_ARGS=--model-kwargs '{kwargs}'")
    assert out.returncode == 0 and not list(other.glob("*.plan*"))
    assert np.load(other / "b16_384.reference.npz")["photos.input"].dtype == np.uint8
