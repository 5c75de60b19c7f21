"""Reproducible artifacts: no path of the build machine in any artifact byte, and the same checkpoint
and options built in two clones at different paths give byte-identical fp32 and fp16 ONNX files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import SMALL_KWARGS
from vitrt.metadata import sha256_file

REPO = Path(__file__).resolve().parents[1]


def _needles(*dirs: Path) -> set[bytes]:
    """The build machine's paths an artifact must not name: the build and output folders, the repository
    the code ran from, the environment's prefix (the venv: site-packages' paths start with it), and the
    home folder (vitrt's caches, ~/.cache/vitrt, are under it) unless it is the root or a temp folder. A
    short generic path (``/tmp``) is not searched for itself: 4 bytes turn up by chance in megabytes of weights; the
    two-clones test gives its builds a temp folder of their own to search for instead."""
    home = Path.home()
    generic = len(os.fspath(home)) < 5 or home in (Path("/tmp"), Path("/var/tmp"))  # "/", "/tmp": not searched
    paths = {*dirs, REPO, Path(sys.prefix), *([] if generic else [home])}
    return {os.fspath(v).encode() for p in paths for v in (p, p.resolve())}


def _hits(folder: Path, needles: set[bytes]) -> list[str]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.name}: {n.decode()!r} x{data.count(n)}" for n in needles if n in data]
    return found


def test_no_artifact_byte_names_a_path_of_the_build_machine(small_build):
    """Every file a full build writes (ONNX of every precision, TensorRT-RTX plans, sidecars, parity
    reports, the reference outputs) is searched, byte by byte. The dynamo exporter's node metadata
    held the clone's path 1,689 times in b16_384.onnx before (export/onnx_export.py PATH_METADATA_KEYS)."""
    paths, _ = small_build
    out = Path(next(iter(paths.values()))).parent
    files = [p for p in out.iterdir() if p.is_file()]
    assert {p.suffix for p in files} >= {".onnx", ".json", ".npz"}, sorted(p.name for p in files)
    assert _hits(out, _needles(out)) == []


def _clone(root: Path) -> Path:
    """The packages the build runs, copied to ``root`` (a clone at another path: `python -m export` run
    there imports these copies, so the exporter's stack traces would name ``root``)."""
    root.mkdir(parents=True)
    for pkg in ("export", "vitrt"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_two_clones_at_different_paths_build_byte_identical_fp32_and_fp16(tmp_path):
    clones = [_clone(tmp_path / "a"), _clone(tmp_path / "clone-at-a-longer-path")]
    cmd = [sys.executable, "-m", "export", "--weights", "random", "--model-kwargs", json.dumps(SMALL_KWARGS),
           "--precision", "fp16", "--plan", "no", "--output-dir", "out", "--name", "m"]
    # each build's own home (the caches under it) and temp folder, to search for: a tool that wrote its
    # scratch path (tempfile.gettempdir()) or a cache path into an artifact is caught
    homes, tmps = [tmp_path / "home" / c.name for c in clones], [tmp_path / "tmp" / c.name for c in clones]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VITRT_CACHE_DIR", "VITRT_CACHE", "XDG_CACHE_HOME")}
    for d in homes + tmps:
        d.mkdir(parents=True)
    procs = [subprocess.Popen(cmd, cwd=c, env={**env, "HOME": str(h), "TMPDIR": str(t)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for c, h, t in zip(clones, homes, tmps)]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for c, p, log in zip(clones, procs, logs):
        assert p.returncode == 0, log[-3000:]
        assert f"{c}/vitrt" in subprocess.run([sys.executable, "-c", "import vitrt; print(vitrt.__file__)"],
                                              cwd=c, env=env, capture_output=True, text=True).stdout  # its own copy
    for name in ("m.onnx", "m_fp16.onnx"):
        a, b = (sha256_file(c / "out" / name) for c in clones)
        assert a == b, name
    for c in clones:
        assert _hits(c / "out", _needles(*clones, *homes, *tmps)) == []
