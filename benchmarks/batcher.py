"""In-process batching (vitrt/batcher.py), measured: the numbers behind its defaults and its claims.

    python -m benchmarks.batcher [--artifact artifacts/b16_384_int8_cpu.onnx] [--pairs 40] [--seconds 20]

1. A backend with a GPU's cost shape (a batch costs a + b*n seconds, a >> b; one batch at a time): 32
   callers one image each, with and without batching; and the batching delay swept at 8 and 32 callers
   (the default's measurement).
2. With ``--artifact``, the real CPU backend: concurrency 1 alternated call by call, plain
   ``Engine.predict`` against ``Engine(batching=True).predict`` on the same JPEG (the batcher's cost for a
   lone caller; these machines drift 10-30 % between runs, so pairs, not runs); and the concurrency rows
   ``make bench`` shows: 1, 8 and 32 callers with and without batching.
Writes reports/batcher.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .common import REPORTS, machine_info, markdown_table, write_reports

COST_A, COST_B = 0.040, 0.001  # seconds: a fixed launch cost 40x the per-image cost


class CostModel:
    def __init__(self, a: float = COST_A, b: float = COST_B):
        self.a, self.b, self.lock, self.sizes = a, b, threading.Lock(), []

    def __call__(self, batch):
        with self.lock:
            self.sizes.append(len(batch))
            time.sleep(self.a + self.b * len(batch))
            return {"x": batch}


def load(call, callers: int, per_caller: int) -> dict:
    """``callers`` threads, each calling ``call()`` ``per_caller`` times: throughput and latency."""
    lat: list[float] = []
    lock = threading.Lock()

    def worker(_):
        for _ in range(per_caller):
            t0 = time.perf_counter()
            call()
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(worker, range(callers)))
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"callers": callers, "requests": len(lat), "img_s": len(lat) / wall, "p50": float(np.median(ms)),
            "p99": float(np.percentile(ms, 99))}


def cost_model(log=print) -> dict:
    from vitrt.batcher import MAX_DELAY_MS, Batcher

    one = np.zeros((1, 1), np.uint8)
    rows = []
    plain = CostModel()
    base = load(lambda: plain(one), 32, 4)
    rows.append({"mode": "no batching", "delay_ms": None, **base})
    for delay in (0.0, 1.0, MAX_DELAY_MS, 5.0, 10.0, 20.0):
        for callers in (8, 32):
            model = CostModel()
            b = Batcher(model, max_batch=32, max_delay_ms=delay, max_queue=256)
            r = load(lambda: b.submit(one).result(), callers, 8 if callers == 8 else 4)
            b.close()
            rows.append({"mode": "batching", "delay_ms": delay, **r, "mean_batch": float(np.mean(model.sizes))})
            log(f"cost model, delay {delay} ms, {callers} callers: {r['img_s']:.0f} img/s, p99 {r['p99']:.0f} ms")
    best32 = next(r for r in rows if r["mode"] == "batching" and r["delay_ms"] == MAX_DELAY_MS and r["callers"] == 32)
    return {"a_s": COST_A, "b_s": COST_B, "rows": rows, "speedup_32": best32["img_s"] / base["img_s"],
            "p99_bound_ms": MAX_DELAY_MS + 2000 * (COST_A + 32 * COST_B), "p99_32": best32["p99"]}


def _jpeg() -> bytes:
    from PIL import Image

    from export.images import builtin_photos

    buf = io.BytesIO()
    Image.open(builtin_photos()[0]).convert("RGB").resize((640, 480)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def lone_caller(artifact: Path, pairs: int, log=print) -> dict:
    """Concurrency 1, alternated call by call: Engine.predict without and with batching, same JPEG."""
    import vitrt

    blob = _jpeg()
    with vitrt.Engine(artifact) as plain, vitrt.Engine(artifact, batching=True) as batched:
        for e in (plain, batched):
            e.predict(blob)  # warm-up (OpenVINO compiles batch 1 on first use)
        a, b = [], []
        for i in range(pairs):
            for engine, out in ((plain, a), (batched, b)) if i % 2 == 0 else ((batched, b), (plain, a)):
                t0 = time.perf_counter()
                engine.predict(blob)
                out.append(1000 * (time.perf_counter() - t0))
    r = {"pairs": pairs, "plain_p50": float(np.median(a)), "batching_p50": float(np.median(b))}
    r["ratio"] = r["batching_p50"] / r["plain_p50"]
    log(f"concurrency 1: plain {r['plain_p50']:.1f} ms, batching {r['batching_p50']:.1f} ms ({r['ratio']:.3f}x)")
    return r


def concurrency_rows(artifact: Path, callers=(1, 8, 32), per_caller: int = 2, threads: int | None = None,
                     log=print) -> list[dict]:
    """In-process Engine.predict of one JPEG from ``callers`` threads, with batching and without, the
    engine on ``threads`` CPU threads (the benchmark's own; None: the Engine's default; a plan runs on
    its GPU and takes none)."""
    import vitrt

    blob = _jpeg()
    rows = []
    for batching in (False, True):
        on_cpu = Path(artifact).suffix == ".onnx"
        with vitrt.Engine(artifact, batching=batching, threads=threads if on_cpu else None) as engine:
            engine.predict(blob)
            for n in callers:
                r = load(lambda: engine.predict(blob), n, per_caller)
                rows.append({"batching": batching, "threads": engine.threads, **r})
                log(f"{'batching' if batching else 'plain   '} {n:2d} callers: {r['img_s']:.2f} img/s, "
                    f"p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms")
    return rows


def markdown(report: dict) -> str:
    cm = report["cost_model"]
    lines = [f"# In-process batching ({report['machine']['cpu']})", "",
             f"Cost model: a batch costs {1000 * cm['a_s']:.0f} + {1000 * cm['b_s']:.0f}*n ms, one at a time.", "",
             markdown_table(["mode", "delay ms", "callers", "img/s", "p50 ms", "p99 ms", "mean batch"],
                            [[r["mode"], "" if r["delay_ms"] is None else f"{r['delay_ms']:g}", r["callers"],
                              f"{r['img_s']:.0f}", f"{r['p50']:.0f}", f"{r['p99']:.0f}", f"{r.get('mean_batch', 1):.1f}"]
                             for r in cm["rows"]]), "",
             f"32 callers, default delay: {cm['speedup_32']:.1f}x the throughput without batching; p99 "
             f"{cm['p99_32']:.0f} ms against the bound max_delay + 2 batch times = {cm['p99_bound_ms']:.0f} ms."]
    if report.get("lone_caller"):
        lc = report["lone_caller"]
        lines += ["", f"Real backend ({Path(report['artifact']).name}), concurrency 1, {lc['pairs']} alternated pairs: "
                      f"plain {lc['plain_p50']:.1f} ms, batching {lc['batching_p50']:.1f} ms ({lc['ratio']:.3f}x)."]
    if report.get("concurrency"):
        lines += ["", markdown_table(["batching", "callers", "img/s", "p50 ms", "p99 ms"],
                                     [["on" if r["batching"] else "off", r["callers"], f"{r['img_s']:.2f}",
                                       f"{r['p50']:.0f}", f"{r['p99']:.0f}"] for r in report["concurrency"]])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, default=None, help="a real artifact for parts 2 (default: cost model only)")
    p.add_argument("--pairs", type=int, default=40, help="alternated concurrency-1 pairs (default: %(default)s)")
    p.add_argument("--per-caller", type=int, default=2, help="calls per caller in the concurrency rows (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    args = p.parse_args(argv)
    report = {"machine": machine_info(), "cost_model": cost_model(), "artifact": str(args.artifact) if args.artifact else None}
    if args.artifact:
        report["lone_caller"] = lone_caller(args.artifact, args.pairs)
        report["concurrency"] = concurrency_rows(args.artifact, per_caller=args.per_caller)
    text = markdown(report)
    write_reports("batcher", report, text, folder=args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
