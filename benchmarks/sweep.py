"""``make bench QUICK=0``: the full sweep, each row in its own process, one row after another.

Holding every row at once (10 on a CPU: the PyTorch peers, OpenVINO, NNCF, PT2E, each artifact on both
CPU runtimes) grew one process past 20 GB at batch 32 on a 24 GiB machine: each runtime keeps the
buffers of the largest batch it ran (ONNX Runtime's arena does not shrink). Here a row is built,
checked (embedding cosine against PyTorch eager FP32 on the photos) and timed at every batch size in a
child process (``python -m benchmarks.sweep JOB.json``), which then exits and returns all of it: peak
memory is one row's, not the sum. The price: rows are timed minutes apart, not interleaved as in the
quick run; each row's process times a fixed numpy matmul first (``probe_ms``), so that the report
shows how much the machine itself drifted over the sweep.

The parent reads the child's output: lines that start with :data:`PROGRESS` are progress (passed on
with the run's clock), others (library warnings) go to stderr as they are. A row whose process fails
is listed under "Not run" with its last line; the reference row (PyTorch eager FP32) failing stops the run.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROGRESS = "bench-row: "  # the prefix of a child's progress lines on its stdout
ROOT = Path(__file__).resolve().parents[1]  # the folder holding benchmarks/, export/, vitrt/


def label(spec: dict) -> str:
    """A row's name before it is built (its process names it exactly once built)."""
    if spec["kind"] == "artifact":
        return spec["artifact"] + (" on the other CPU runtime" if spec.get("other_runtime") else "")
    return spec["kind"]


def sweep(specs: list[dict], folder: Path, cfg: dict, threads: int, skipped: dict, weights: str | None = None,
          calib_dir: str | None = None, say=print) -> list[dict]:
    """Each spec's row measured in its own process (:func:`measure_row`), in order; the first spec is the
    reference (its embeddings are the others' yardstick). Returns the rows' results in order."""
    from vitrt.errors import VitrtError

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vitrt-bench-") as tmp:
        ref = None
        for i, spec in enumerate(specs):
            job = {"spec": spec, "folder": str(folder), "cfg": cfg, "threads": threads, "weights": weights,
                   "calib_dir": calib_dir, "reference": ref, "reference_out": f"{tmp}/reference.npy",
                   "out": f"{tmp}/row{i}.json"}
            Path(f"{tmp}/job{i}.json").write_text(json.dumps(job))
            say(f"row {i + 1}/{len(specs)}: {label(spec)}, in its own process")
            rc, last = _run_child(f"{tmp}/job{i}.json", say)
            if rc != 0:
                why = f"its process exited with {rc}: {last}"
                if i == 0:
                    raise VitrtError(f"the reference row ({label(spec)}) failed, so no row can be compared: {why}")
                skipped[label(spec)] = why
                say(f"row {i + 1}/{len(specs)} failed: {label(spec)}: {why}")
                continue
            row = json.loads(Path(job["out"]).read_text())
            skipped.update(row.pop("skipped"))
            rows.append(row)
            ref = job["reference_out"]
            say(f"row {i + 1}/{len(specs)} done: {row['name']}: {row['seconds']:.0f} s, peak resident memory "
                f"{row['peak_rss_gb']:.1f} GB")
    return rows


def _run_child(job_path: str, say) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.sweep", job_path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    tail: collections.deque = collections.deque(maxlen=20)
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS):
                say(line[len(PROGRESS):])
            else:
                print(line, file=sys.stderr, flush=True)
                if line.strip():
                    tail.append(line.strip())
        rc = proc.wait()
    finally:  # an interrupted sweep leaves no row process behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, (tail[-1] if tail else "no output")


def probe_ms(n: int = 1024, repeats: int = 5) -> float:
    """Median milliseconds of one n x n float32 matmul: the machine's own speed, for drift across rows."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def measure_row(job: dict) -> dict:
    """In the row's own process: build it, its embedding cosine on the photos, every point of the sweep
    (what it compiled for one batch size released before the next)."""
    import resource

    from .timing import bench_inputs, measure, summarize
    from .rows import VitrtPeer, build_row
    from .standing import cosines, embeddings, photo_crops

    def say(msg: str) -> None:
        print(PROGRESS + msg, flush=True)

    t0 = time.perf_counter()
    cfg, spec, folder = job["cfg"], job["spec"], Path(job["folder"])
    if spec["kind"] != "artifact":  # an artifact row runs without torch: its process does not load it
        import torch

        torch.set_num_threads(job["threads"])
    probe = probe_ms()
    skipped: dict = {}
    say(f"building {label(spec)}")
    runner, macs = build_row(spec, folder, job["threads"], skipped, job["weights"], job["calib_dir"], log=say)
    say(f"built {runner.name} in {time.perf_counter() - t0:.0f} s; its embeddings of the photos")
    e = embeddings(runner, photo_crops()[::cfg["photo_step"]])
    if job["reference"] is None:
        np.save(job["reference_out"], e)
        ref = e
    else:
        ref = np.load(job["reference"])
    results: dict = {"model": {}, "e2e": {}}
    batches = [b for b in cfg["batches"] if b <= getattr(runner, "max_batch", 10**9)]
    inputs = bench_inputs(batches)
    for b in batches:
        for mode in ("model", "e2e") if b in (cfg["e2e_batches"] or cfg["batches"]) else ("model",):
            say(f"timing {runner.name}: batch {b}, {mode}")
            batch, files = inputs[b]
            fn = (lambda: runner.infer(batch)) if mode == "model" else (lambda: runner.predict(files))
            m = measure(fn, cfg["warmup"], cfg["min_iters"], cfg["seconds"], runner.sync)
            m.pop("times")
            results[mode][str(b)] = summarize(m, b)
        if hasattr(runner, "release"):
            runner.release(b)
    if isinstance(runner, VitrtPeer):
        runner.engine.close()
    return {"name": runner.name, "spec": spec, "results": results, "accuracy": cosines(e, ref),
            "default": bool(getattr(runner, "default", False)), "macs": macs, "skipped": skipped,
            "probe_ms": probe, "pid": os.getpid(), "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "helpers_peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}


def main(argv=None) -> int:
    from vitrt.errors import VitrtError

    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    try:
        row = measure_row(job)
    except VitrtError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    tmp = job["out"] + ".tmp"
    Path(tmp).write_text(json.dumps(row))
    os.replace(tmp, job["out"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
