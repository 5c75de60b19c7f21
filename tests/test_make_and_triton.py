"""`make engine` on a machine without TensorRT, and `make triton`'s config parsed with Triton's schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL_KWARGS

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def _make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`make` on the test's own venv. HAVE_GPU= keeps `make engine` from pip-installing full TensorRT
    into it where nvidia-smi works (a GPU host): the tests use what the venv has."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "--no-print-directory", "-C", str(cwd), *args, f"VENV={VENV}", "HAVE_GPU="],
                          capture_output=True, text=True, timeout=900)


def test_make_engine_without_full_tensorrt(tmp_path):
    """PRECISION=fp32 asks for no plan (a plain message says so); TRT=tensorrt PLAN=yes where full
    TensorRT cannot build is an error."""
    from export.trt_build import load

    if not isinstance(load("tensorrt"), str):
        pytest.skip("full TensorRT can build here (a GPU machine with TensorRT)")
    kwargs = json.dumps(SMALL_KWARGS).replace(" ", "")
    out = _make("engine", f"ARTIFACTS={tmp_path}", "WEIGHTS=random", "PRECISION=fp32", "TRT=tensorrt",
                f"EXPORT_ARGS=--model-kwargs '{kwargs}'")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "No TensorRT plan: PRECISION=fp32 asks for no GPU precision" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b16_384.onnx", "b16_384.onnx.parity.json",
                                                          "b16_384.reference.npz"]
    out = _make("engine", f"ARTIFACTS={tmp_path}", "WEIGHTS=random", "PRECISION=fp32", "PLAN=yes", "TRT=tensorrt",
                f"EXPORT_ARGS=--model-kwargs '{kwargs}'")
    assert out.returncode != 0 and "cannot build TensorRT plans here:" in out.stderr
    assert not list(tmp_path.glob("*.plan*"))


def _sidecar_plan(tmp_path: Path, small_onnx: Path) -> Path:
    from vitrt.metadata import Metadata, sha256_file

    plan = tmp_path / "b16_384.plan"
    plan.write_bytes(b"\x00plan bytes")
    meta = Metadata.from_onnx(small_onnx).data
    meta["batch"] = {"min": 1, "opt": 8, "max": 32, "dynamic": True}
    meta["plan"] = {"sha256": sha256_file(plan), "tensorrt": "10.14.1.48", "compute_capability": "9.0"}
    (tmp_path / "b16_384.plan.json").write_text(json.dumps(meta))
    return plan


def test_triton_config_parses_with_tritons_schema(tmp_path, small_onnx):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from export.triton import write_repository

    plan = _sidecar_plan(tmp_path, small_onnx)
    folder = write_repository(plan, tmp_path / "repo")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "vitrt_b16_384" and config.platform == "tensorrt_plan" and config.max_batch_size == 32
    (inp,) = config.input
    assert inp.name == "image" and inp.data_type == mc.TYPE_UINT8 and list(inp.dims) == [384, 384, 3]
    outs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert outs == {"logits": (mc.TYPE_FP32, [1000]), "embedding": (mc.TYPE_FP32, [SMALL_KWARGS["embed_dim"]])}
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (folder / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert json.loads((folder / "vitrt.json").read_text())["plan"]["sha256"]


def test_make_triton(tmp_path, small_onnx):
    _sidecar_plan(tmp_path, small_onnx)
    out = _make("triton", f"ARTIFACTS={tmp_path}", f"TRITON_REPO={tmp_path / 'repo'}")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "repo" / "vitrt_b16_384" / "config.pbtxt").is_file()
    out = _make("triton", f"ARTIFACTS={tmp_path}", "PRECISION=int8", f"TRITON_REPO={tmp_path / 'repo'}")
    assert out.returncode != 0 and "b16_384_int8.plan does not exist" in out.stderr
