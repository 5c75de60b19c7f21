"""ONNX Runtime CPU session options, side by side on one artifact: intra-op threads, spinning, graph
optimization level. The winner becomes the CPU default in vitrt/backends/onnxruntime.py.

    python -m benchmarks.ort_options artifacts/b16_384_int8_cpu.onnx [--seconds 8] [--batch 1]
        [--against artifacts/b16_384.onnx]

Configurations are interleaved (each measured twice, in alternating rounds) so that a slow spell of
a noisy machine hits all of them; the report gives each one's median latency and its ratio to
ONNX Runtime's defaults. Writes reports/ort_options.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from .common import REPORTS, machine_info, markdown_table, write_reports


def physical_cores() -> int:
    """The physical cores this process may use (vitrt.cpu: affinity and cgroup quota)."""
    from vitrt.cpu import usable_cores

    return usable_cores()[0]


def configs() -> dict[str, dict]:
    n = physical_cores()
    return {
        "ORT defaults": {},
        f"threads={n} (physical cores)": {"threads": n},
        "threads=1": {"threads": 1},
        f"threads={n}, spinning off": {"threads": n, "spin": "0"},
        f"threads={n}, opt level extended": {"threads": n, "level": "ORT_ENABLE_EXTENDED"},
        f"threads={n}, opt level basic": {"threads": n, "level": "ORT_ENABLE_BASIC"},
        f"threads={n}, spinning off, extended": {"threads": n, "spin": "0", "level": "ORT_ENABLE_EXTENDED"},
        # vitrt's exact int8 products (vitrt/backends/onnxruntime.py): its cost where u8 x s8 saturates
        f"threads={n}, x64quantprecision": {"threads": n, "x64": "1"},
    }


def session(path: Path, cfg: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if "threads" in cfg:
        so.intra_op_num_threads = cfg["threads"]
    if "spin" in cfg:
        so.add_session_config_entry("session.intra_op.allow_spinning", cfg["spin"])
    if "x64" in cfg:
        so.add_session_config_entry("session.x64quantprecision", cfg["x64"])
    if "level" in cfg:
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, cfg["level"])
    return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])


def run(path: Path, seconds: float, batch: int, rounds: int = 3, against: Path | None = None) -> dict:
    x = np.random.default_rng(0).integers(0, 256, (batch, 384, 384, 3), dtype=np.uint8)
    cfgs = configs()
    sessions = {name: session(path, cfg) for name, cfg in cfgs.items()}
    if against is not None:  # another artifact under ORT's defaults, in the same interleaved rounds
        cfgs[f"{against.name}, ORT defaults"] = {"artifact": against.name}
        sessions[f"{against.name}, ORT defaults"] = session(against, {})
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    for _ in range(rounds):
        for name, s in sessions.items():
            s.run(None, {"image": x})  # warm-up
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                s.run(None, {"image": x})
                times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["ORT defaults"]))
    rows = {name: {"p50_ms": 1e3 * float(np.median(t)), "n": len(t), "vs_defaults": base / float(np.median(t))}
            for name, t in times.items()}
    return {"artifact": path.name, "batch": batch, "seconds_each": seconds * rounds, "configs": cfgs,
            "results": rows, "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path, help="a .onnx artifact")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per configuration per round (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")
    p.add_argument("--against", type=Path, default=None,
                   help="also time this artifact (e.g. the fp32 ONNX) under ORT's defaults, interleaved (default: none)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    args = p.parse_args(argv)
    data = run(args.artifact, args.seconds, args.batch, against=args.against)
    md = (f"ONNX Runtime CPU options on {data['artifact']}, batch {data['batch']}, {data['machine']['cpu']}, "
          f"{data['date']}\n\n" + markdown_table(
              ["configuration", "p50 ms", "calls", "speed vs defaults"],
              [[k, f"{v['p50_ms']:.1f}", v["n"], f"{v['vs_defaults']:.2f}x"] for k, v in data["results"].items()]))
    write_reports("ort_options", data, md, folder=args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
