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


def _artifacts(tmp_path: Path, small_onnx: Path) -> Path:
    """An artifacts folder holding the small ViT as set b16_384 (published: its report beside it)."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    shutil.copy(small_onnx, folder / "b16_384.onnx")
    (folder / "b16_384.onnx.parity.json").write_text("{}")
    (folder / "b16_384.reference.npz").write_bytes(b"")
    return folder


def test_make_triton_writes_the_serving_repository(tmp_path, small_onnx):
    """`make triton`: the repository `vitrt serve` runs (Python backend, image bytes in), the artifact
    inside it, and a config that Triton's own schema parses."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    folder = _artifacts(tmp_path, small_onnx)
    out = _make("triton", f"ARTIFACTS={folder}", f"TRITON_REPO={tmp_path / 'repo'}")
    assert out.returncode == 0, out.stderr
    model = tmp_path / "repo" / "b16_384"
    config = text_format.Parse((model / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "b16_384" and config.backend == "python" and config.max_batch_size == 4
    (inp,) = config.input
    assert inp.name == "image" and inp.data_type == mc.TYPE_STRING and list(inp.dims) == [1]
    outs = {o.name: (o.data_type, list(o.dims), o.label_filename) for o in config.output}
    assert outs == {"logits": (mc.TYPE_FP32, [1000], "labels.txt"),
                    "embedding": (mc.TYPE_FP32, [SMALL_KWARGS["embed_dim"]], "")}
    policy = config.dynamic_batching.default_queue_policy
    assert policy.max_queue_size > 0 and policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert config.parameters["artifact"].string_value == "b16_384.onnx"
    assert config.parameters["precision"].string_value == "fp32" and len(config.parameters["sha256"].string_value) == 64
    assert (model / "1" / "b16_384.onnx").read_bytes() == (folder / "b16_384.onnx").read_bytes()
    assert (model / "1" / "model.py").read_text() == (ROOT / "vitrt/serving/triton_model.py").read_text()
    assert len((model / "labels.txt").read_text().splitlines()) == 1000
    out = _make("triton", f"ARTIFACTS={folder}", "PRECISION=int8", f"TRITON_REPO={tmp_path / 'repo'}")
    assert out.returncode != 0 and "b16_384_int8.plan does not exist" in out.stderr
