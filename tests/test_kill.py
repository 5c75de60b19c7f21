"""kill -9 during a build, at chosen steps: no partial artifact under a final name, no artifact without
its report, and after a rerun no temp files, no scratch folders, everything published."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from vitrt.artifacts import parity_path, sidecar_path
from vitrt.metadata import Metadata, sha256_file

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from export import publish
from export.build import build
from conftest import build_opts

event, name = sys.argv[1], sys.argv[2]

def hook(step, path):
    if step == event and Path(path).name.startswith(name):
        os.kill(os.getpid(), signal.SIGKILL)

publish.on_event = hook
build(build_opts(Path(sys.argv[3]), precision="fp16", trt="tensorrt-rtx"), log=lambda m: None)
"""

#: (event, artifact-name prefix): each step of each kind of artifact, in build order. The plan's steps
#: need TensorRT-RTX's builder (the build extra has it); without it the build makes no plan.
ONNX_KILLS = [("written", "m.onnx"), ("checked", "m.onnx"), ("report", "m.onnx"), ("published", "m.onnx"),
              ("scratch", ".fp16"), ("written", "m_fp16.onnx"), ("report", "m_fp16.onnx")]
PLAN_KILLS = [("written", "m.plan"), ("report", "m.plan"), ("companions", "m.plan")]


def _have_rtx() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt_rtx") is not None


def _check_published(out: Path) -> list[str]:
    """Every file under a final artifact name is whole and has the report it was published with."""
    names = []
    for art in sorted(out.glob("m*.onnx")) + sorted(out.glob("m*.plan")):
        assert parity_path(art).is_file(), f"{art.name} without its report"
        if art.suffix == ".onnx":
            Metadata.from_onnx(art)  # complete: its metadata (at the end of the file) reads
        else:
            side = json.loads(sidecar_path(art).read_text())
            assert side["plan"]["sha256"] == sha256_file(art), f"{art.name} does not match its sidecar"
        names.append(art.name)
    return names


def test_kill_at_every_step_then_rerun(tmp_path):
    """Each kill must land (the step happened: the process died of SIGKILL), and what it left must be
    whole. Without tensorrt_rtx the plan's steps are not run: the build then makes no plan."""
    out = tmp_path / "artifacts"
    script = SCRIPT.format(tests=str(Path(__file__).parent))
    plans = _have_rtx()
    for event, name in ONNX_KILLS + (PLAN_KILLS if plans else []):
        proc = subprocess.run([sys.executable, "-c", script, event, name, str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, (event, name, proc.stderr[-2000:])
        _check_published(out)
    proc = subprocess.run([sys.executable, "-c", script, "never", "-", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _check_published(out) == ["m.onnx", "m_fp16.onnx"] + (["m.plan"] if plans else [])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # temp files and scratch removed
    assert (out / "m.reference.npz").is_file()
