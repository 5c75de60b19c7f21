"""How the benchmarks time a call and what they feed it: shared by benchmarks/bench.py (the quick run,
in one process) and benchmarks/sweep.py (the full run, a process per row)."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from .common import percentiles


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
    return {**stats(times), "times": times}


def stats(times: list[float]) -> dict:
    """What a point's timed calls (seconds) give: their count and sum, p50/p90/p99 and the spread, the
    fastest and slowest call (ms): :func:`benchmarks.standing.verdict` calls two rows whose spreads
    overlap "within noise"."""
    ms = [1e3 * t for t in times]
    return {"iters": len(times), "seconds": float(sum(times)), **percentiles(times), "min": min(ms), "max": max(ms)}


def summarize(m: dict, batch: int) -> dict:
    """Add throughput (images/s over all timed calls) to a :func:`measure` result."""
    return {**m, "batch": batch, "img_s": batch * m["iters"] / m["seconds"]}



def bench_inputs(batches: list[int]) -> dict[int, tuple[np.ndarray, list[bytes]]]:
    """Per batch size: a uint8 crop batch (model only) and that many JPEGs (end to end), the same every run."""
    import vitrt

    from .preprocess import make_jpegs

    jpegs = [data for _, data in make_jpegs()]
    crops = np.stack([vitrt.preprocess(j) for j in jpegs])
    rng = np.random.default_rng(0)
    return {b: (crops[rng.integers(0, len(crops), b)], [jpegs[i % len(jpegs)] for i in range(b)]) for b in batches}
