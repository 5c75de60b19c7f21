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
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .common import REPORTS, find_artifacts, machine_info, markdown_table, percentiles, reference_model, write_reports

QUICK = {"batches": [1, 2], "warmup": 1, "min_iters": 3, "seconds": 0.0}
FULL = {"batches": [1, 2, 4, 8, 16, 32], "warmup": 3, "min_iters": 10, "seconds": 10.0}


def measure(fn: Callable[[], Any], warmup: int, min_iters: int, seconds: float, sync: Callable[[], None] = lambda: None) -> dict:
    """Call ``fn`` ``warmup`` times, then time calls until both ``min_iters`` and ``seconds`` are reached."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"iters": len(times), "seconds": float(sum(times)), **percentiles(times)}


def summarize(m: dict, batch: int) -> dict:
    """Add throughput (images/s over all timed calls) to a :func:`measure` result."""
    return {**m, "batch": batch, "img_s": batch * m["iters"] / m["seconds"]}


class TorchPeer:
    """A PyTorch peer over the same uint8-in graph as the artifacts (ImageModel: normalize in-model)."""

    def __init__(self, name: str, model, data_config: dict, device: str, autocast: Any = None, compile: bool = False):
        import torch

        from export.graph import ImageModel

        self.name, self.device, self.autocast = name, device, autocast
        self.module = ImageModel(model, data_config).eval().to(device)
        # model only: uint8 in, normalized in the module (the artifacts' graph); end to end: timm's
        # normalized tensor into the timm model. Both compiled for the torch.compile peer.
        self.fn = torch.compile(self.module) if compile else self.module
        self.model_fn = torch.compile(self.module.model) if compile else self.module.model
        self.data_config = data_config
        self.tf = None

    def _run(self, x):
        import torch

        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(self.device, dtype=self.autocast):
                    return self.fn(x)
            return self.fn(x)

    def infer(self, batch: np.ndarray):
        import torch

        out = self._run(torch.from_numpy(batch).to(self.device))
        return out[0].float().cpu().numpy()

    def predict(self, jpegs: list[bytes]):
        """timm's own pipeline: decode, timm transform, model, softmax top-5."""
        import timm.data
        import torch
        from PIL import Image

        if self.tf is None:
            self.tf = timm.data.create_transform(**self.data_config, is_training=False)
        x = torch.stack([self.tf(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]).to(self.device)
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(self.device, dtype=self.autocast):
                    logits = self.model_fn(x)
            else:
                logits = self.model_fn(x)
            return torch.topk(logits.float().softmax(-1), 5).indices.cpu().numpy()

    def sync(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()


class VitrtPeer:
    def __init__(self, artifact: Path, threads: int):
        import vitrt

        self.engine = vitrt.Engine(artifact, threads=threads)
        self.name = f"{artifact.name} ({self.engine.backend.name})"
        self.max_batch = self.engine.metadata.max_batch

    def infer(self, batch: np.ndarray):
        return self.engine.infer(batch)

    def predict(self, jpegs: list[bytes]):
        return self.engine.predict(jpegs)

    def sync(self):  # Engine.infer returns host arrays: it has synchronized already
        pass


def torch_device() -> str:
    """Where the PyTorch peers run: "cuda" with an NVIDIA GPU that torch sees (FP16 autocast), else
    "cpu" (bf16 autocast)."""
    import torch

    from vitrt.cuda import gpu_count

    return "cuda" if gpu_count() and torch.cuda.is_available() else "cpu"


def peers(artifacts: list[Path], threads: int, include_compile: bool = True) -> list:
    """PyTorch eager, autocast and torch.compile (same weights as the artifacts), then every artifact."""
    import timm.data
    import torch

    onnx = next(p for p in artifacts if p.suffix == ".onnx")
    model, meta = reference_model(onnx)
    data_config = timm.data.resolve_model_data_config(model)
    device = torch_device()
    out: list = [TorchPeer("PyTorch eager FP32", model, data_config, device)]
    if device == "cuda":
        out.append(TorchPeer("PyTorch FP16 autocast", model, data_config, device, autocast=torch.float16))
    else:
        out.append(TorchPeer("PyTorch bf16 autocast", model, data_config, device, autocast=torch.bfloat16))
    if include_compile:
        out.append(TorchPeer("torch.compile FP32", model, data_config, device, compile=True))
    out += [VitrtPeer(p, threads) for p in artifacts]
    return out


def run(artifacts_dir: Path, quick: bool = True, threads: int | None = None, batches: list[int] | None = None,
        seconds: float | None = None, include_compile: bool = True, out: Path = REPORTS, progress: bool = True,
        only: list[str] | None = None) -> dict:
    import torch

    from vitrt.errors import ArtifactError

    from .preprocess import make_jpegs

    cfg = dict(QUICK if quick else FULL)
    if batches:
        cfg["batches"] = batches
    if seconds is not None:
        cfg["seconds"] = seconds
    threads = threads or os.cpu_count() or 1
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
    runners = peers(artifacts, threads, include_compile)
    jpegs = [data for _, data in make_jpegs()]
    rng = np.random.default_rng(0)
    import vitrt

    crops = np.stack([vitrt.preprocess(j) for j in jpegs])
    results: dict[str, dict[str, dict]] = {"model": {}, "e2e": {}}
    steps = [(r, b) for r in runners for b in cfg["batches"] if b <= getattr(r, "max_batch", 10**9)]
    bar = _bar(len(steps) * 2, progress)
    for runner, b in steps:
        batch = crops[rng.integers(0, len(crops), b)]
        files = [jpegs[i % len(jpegs)] for i in range(b)]
        for mode, fn in (("model", lambda: runner.infer(batch)), ("e2e", lambda: runner.predict(files))):
            if bar is not None:
                bar.set_description(f"{runner.name[:40]} {mode} b{b}")
            m = measure(fn, cfg["warmup"], cfg["min_iters"], cfg["seconds"], runner.sync)
            results[mode].setdefault(runner.name, {})[str(b)] = summarize(m, b)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    for r in runners:
        if isinstance(r, VitrtPeer):
            r.engine.close()
    base = runners[0].name
    for mode in results:
        for name, per_batch in results[mode].items():
            for b, m in per_batch.items():
                ref = results[mode][base].get(b)
                m["vs_eager"] = m["img_s"] / ref["img_s"] if ref else None
    report = {"results": results, "config": {**cfg, "threads": threads, "quick": quick},
              "baseline": base, "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": " ".join(["python -m benchmarks.bench"] + sys.argv[1:])}
    md = to_markdown(report)
    report["paths"] = {k: str(v) for k, v in write_reports("bench", report, md, figure(report), out).items()}
    print(md)
    return report


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="point", leave=False, file=sys.stderr)


def to_markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    where = m["cpu"] + (f", {m['gpu']['name']}" if "gpu" in m else ", no GPU")
    lines = [f"Benchmark {report['date']}: {where}; {cfg['threads']} CPU threads; warm-up {cfg['warmup']}, "
             f"at least {cfg['min_iters']} calls and {cfg['seconds']} s per point; ratio vs {report['baseline']}.", ""]
    titles = {"model": "Model only (preprocessed uint8 batch in)", "e2e": "End to end (encoded JPEGs in, top-5 out)"}
    for mode, title in titles.items():
        rows = []
        for name, per_batch in report["results"][mode].items():
            for b, r in per_batch.items():
                ratio = f"{r['vs_eager']:.2f}x" if r.get("vs_eager") else "-"
                rows.append([name, b, f"{r['img_s']:.2f}", ratio, f"{r['p50']:.1f}", f"{r['p90']:.1f}", f"{r['p99']:.1f}"])
        lines += [f"**{title}**", "", markdown_table(["backend", "batch", "img/s", "vs eager", "p50 ms", "p90 ms", "p99 ms"],
                                                      rows, "lrrrrrr"), ""]
    return "\n".join(lines).rstrip()


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
    p.add_argument("--full", action="store_true", help="the full sweep: batches 1-32, 10 s per point (default: quick)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="comma-separated batch sizes (default: 1,2 quick; 1,2,4,...,32 full)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per point (default: 0 quick, 10 full)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime (default: all cores)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile peer (default: include)")
    p.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=None, metavar="FILES",
                   help="comma-separated artifact file names to time (default: every artifact found)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    args = p.parse_args(argv)
    from vitrt.errors import VitrtError

    try:
        run(args.artifacts, quick=not args.full, threads=args.threads, batches=args.batches, seconds=args.seconds,
            include_compile=args.compile, out=args.out, only=args.only)
    except VitrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
