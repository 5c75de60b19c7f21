"""Batch jobs (vitrt.jobs): a generated collection of about 60 images with nested folders, three
formats, corrupt and truncated files, a non-image file, an empty file, a symlink and a file deleted
while the job runs; outputs against Engine per file; kill -9 at several points, then the same command.

Tolerance against Engine per file: the job runs the same artifact on the same backend, but in batches
of 4 where Engine.embed(path) runs batches of 1, so ONNX Runtime's GEMMs may sum in another order:
1e-4 of the largest value, the fp32 gate's bound (export/gate.py); measured here at about 1e-6.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitrt
from vitrt.jobs.local import ERRORS, MANIFEST, run

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ROOT = Path(__file__).resolve().parents[1]
BAD = ("bad/corrupt.jpg", "bad/truncated.jpg", "bad/truncated.png", "bad/garbage.webp", "bad/header_only.png",
       "bad/empty.jpg")


def _image(path: Path, seed: int, fmt: str) -> None:
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(40, 120)), int(rng.integers(40, 120))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection") / "photos"
    fmts = [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")]
    for i in range(54):
        fmt, ext = fmts[i % 3]
        _image(root / f"d{i % 4}" / (f"sub{i % 2}" if i % 5 else "") / f"img{i:02d}{ext}", i, fmt)
    (root / "bad").mkdir()
    target = sorted(root.glob("d*/**/*.jpg"))[0]
    (root / "link.jpg").symlink_to(target)
    good = target.read_bytes()
    png = sorted(root.glob("d*/**/*.png"))[0].read_bytes()
    (root / "bad/corrupt.jpg").write_bytes(good[:20] + os.urandom(400))
    (root / "bad/truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "bad/truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bad/garbage.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 " + os.urandom(64))
    (root / "bad/header_only.png").write_bytes(png[:33])
    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def engine(small_onnx):
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"]) as e:
        yield e


def _read(out: Path):
    return pq.read_table(out)  # the dataset: part-*.parquet, skipping _vitrt.json and _errors.parquet


def test_embed_equals_engine_and_bad_files_go_to_the_errors_table(collection, engine, tmp_path):
    out = tmp_path / "emb"
    summary = run(engine, collection, out, batch_size=4, shard_size=16, workers=2, progress=False, log=lambda m: None)
    table = _read(out)
    paths = table.column("path").to_pylist()
    assert paths == sorted(paths) and len(set(paths)) == len(paths) and "link.jpg" in paths
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), engine.metadata.data["model"]["num_features"])
    assert len(paths) == 55 and summary["done"] == 55 and summary["failed"] == len(BAD)
    assert summary["skipped_non_images"] == 1 and summary["shards"] == 4  # 61 images, 16 a shard
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    want = np.stack([engine.embed(collection / p) for p in paths])
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
    errors = pq.read_table(out / ERRORS).to_pylist()
    assert sorted(e["path"] for e in errors) == sorted(BAD)
    assert all("expected" in e["error"] for e in errors)
    import pandas

    assert len(pandas.read_parquet(out)) == 55  # readers see exactly the rows
    assert sorted(p.name for p in out.iterdir()) == [ERRORS, MANIFEST] + [f"part-{i:05d}.parquet" for i in range(4)]


def test_predict_with_logits_equals_engine(collection, engine, tmp_path):
    out = tmp_path / "pred"
    vitrt.predict_files(collection / "d1", out, engine=engine, topk=3, logits=True, progress=False, log=lambda m: None)
    rows = _read(out).to_pylist()
    assert rows and all(len(r["topk_index"]) == 3 and len(r["logits"]) == 1000 for r in rows)
    for r in rows[:6]:
        want = engine.predict(collection / "d1" / r["path"], topk=3)
        assert r["topk_index"] == [p.index for p in want] and r["topk_label"] == [p.label for p in want]
        np.testing.assert_allclose(r["topk_prob"], [p.prob for p in want], rtol=1e-4)


def test_a_file_deleted_while_the_job_runs_is_an_error_row(collection, engine, tmp_path):
    src = tmp_path / "copy"
    import shutil

    shutil.copytree(collection, src, symlinks=True)
    victim = sorted(p.relative_to(src).as_posix() for p in src.rglob("img*.png"))[-1]

    def hook(event, shard):
        if event == "recorded" and shard == 0:
            (src / victim).unlink()

    summary = run(engine, src, tmp_path / "out", shard_size=16, progress=False, log=lambda m: None, on_shard=hook)
    errors = {e["path"]: e["error"] for e in pq.read_table(tmp_path / "out" / ERRORS).to_pylist()}
    assert victim in errors and "No such file or directory" in errors[victim] and summary["failed"] == len(BAD) + 1


def test_another_job_refuses_to_mix_into_out(collection, engine, tmp_path):
    out = tmp_path / "o"
    run(engine, collection / "d2", out, progress=False, log=lambda m: None)
    with pytest.raises(vitrt.VitrtError, match="holds the output of another job \\(different options\\)"):
        run(engine, collection / "d2", out, task="predict", progress=False, log=lambda m: None)
    with pytest.raises(vitrt.VitrtError, match="different files"):
        run(engine, collection / "d3", out, progress=False, log=lambda m: None)


KILL_SCRIPT = """
import os, signal, sys
import vitrt
from vitrt.jobs.local import run
event, shard = sys.argv[3], int(sys.argv[4])
seen = {{"batch": 0}}

def hook(what, i):
    if what == "batch" and i == shard:
        seen["batch"] += 1
    if i == shard and what == event and (what != "batch" or seen["batch"] == 2):
        os.kill(os.getpid(), signal.SIGKILL)

with vitrt.Engine(sys.argv[1], providers=["CPUExecutionProvider"]) as e:
    run(e, {src!r}, sys.argv[2], batch_size=4, shard_size=16, progress=False, log=lambda m: None, on_shard=hook)
"""


def test_kill_9_at_any_point_then_rerun_gives_the_same_dataset(collection, small_onnx, engine, tmp_path):
    reference = tmp_path / "uninterrupted"
    run(engine, collection, reference, batch_size=4, shard_size=16, progress=False, log=lambda m: None)
    script = KILL_SCRIPT.format(src=str(collection))
    for event, shard in (("batch", 1), ("renamed", 1), ("batch", 3)):  # mid-shard, rename|manifest, the last shard
        out = tmp_path / f"{event}{shard}"
        killed = subprocess.run([sys.executable, "-c", script, str(small_onnx), str(out), event, str(shard)],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert not (out / ERRORS).exists() and not json.loads((out / MANIFEST).read_text())["complete"]
        again = subprocess.run([sys.executable, "-c", script, str(small_onnx), str(out), "never", "0"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert _read(out).equals(_read(reference)), (event, shard)  # row for row, no duplicate
        assert pq.read_table(out / ERRORS).equals(pq.read_table(reference / ERRORS))
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp file left


def test_ray_on_a_two_node_loopback_cluster_writes_the_same_dataset(collection, small_onnx, engine, tmp_path):
    """`vitrt embed --ray ADDRESS` on a real two-node Ray cluster (`ray start` twice, one CPU each, on
    127.0.0.1): the same layout, columns, types, rows and errors as the single-machine run. Embeddings
    within the same 1e-4 as above (the actors batch the images differently)."""
    pytest.importorskip("ray")
    import shutil

    from benchmarks.serve_process import free_ports

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    gcs, client = free_ports(2)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(200 << 20),
              "--disable-usage-stats"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    local = tmp_path / "local"
    run(engine, collection, local, batch_size=4, shard_size=16, progress=False, log=lambda m: None)
    try:
        for cmd in ([ray_bin, "start", "--head", "--port", str(gcs), "--ray-client-server-port", str(client),
                     "--include-dashboard", "false", *common],
                    [ray_bin, "start", "--address", f"127.0.0.1:{gcs}", *common]):
            started = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
            assert started.returncode == 0, started.stderr[-2000:]
        out = tmp_path / "ray"
        job = subprocess.run([sys.executable, "-m", "vitrt", "embed", str(collection), "-o", str(out), "--engine",
                              str(small_onnx), "--ray", f"127.0.0.1:{gcs}", "--shard-size", "16", "--batch-size", "4"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert job.returncode == 0, job.stderr[-3000:]
        summary = json.loads(job.stdout.strip().splitlines()[-1])
        assert summary["actors"] == 2 and summary["done"] == 55 and summary["failed"] == len(BAD)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120)
    a, b = _read(out), _read(local)
    assert a.schema == b.schema and a.column("path").equals(b.column("path"))
    ea, eb = (np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in (a, b))
    np.testing.assert_allclose(ea, eb, rtol=0, atol=1e-4 * float(np.abs(eb).max()))
    assert pq.read_table(out / ERRORS).equals(pq.read_table(local / ERRORS))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in local.iterdir())


def test_ray_without_an_address_follows_ray_inits_rule(collection, small_onnx, engine, tmp_path):
    """`--ray` with no cluster on this machine starts a local one for the job and says so (ray.init()'s own
    rule); `--ray ADDRESS` that nothing answers is a VitrtError naming the address, not a traceback."""
    pytest.importorskip("ray")
    import shutil

    from benchmarks.serve_process import free_ports

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    # HOME of its own: Ray 2.60's ray.init() gives a local cluster token auth and writes ~/.ray/auth_token,
    # which a later `ray start` cluster on the same machine then expects (the two-node test would fail)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "HOME": str(tmp_path / "home")}
    src = collection / "d1"
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    bad = subprocess.run([sys.executable, "-m", "vitrt", "embed", str(src), "-o", str(tmp_path / "x"), "--engine",
                          str(small_onnx), "--ray", nobody], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 1 and f"cannot reach the Ray cluster at '{nobody}'" in bad.stderr, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr and not (tmp_path / "x" / MANIFEST).exists()
    out = tmp_path / "ray"
    try:
        job = subprocess.run([sys.executable, "-m", "vitrt", "embed", str(src), "-o", str(out), "--engine",
                              str(small_onnx), "--ray", "--actors", "1"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600, env=env)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120, env=env)  # if one was left
    assert job.returncode == 0, job.stderr[-3000:]
    assert not (Path.home() / ".ray" / "auth_token").exists() or (tmp_path / "home" / ".ray").exists()
    assert "no Ray cluster runs on this machine; starting a local one" in job.stderr
    local = tmp_path / "local"
    run(engine, src, local, progress=False, log=lambda m: None)
    assert _read(out).column("path").equals(_read(local).column("path"))
