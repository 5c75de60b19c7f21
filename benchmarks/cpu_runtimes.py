"""The fleet rule's question for one CPU artifact on this CPU: ONNX Runtime or OpenVINO?

    python -m benchmarks.cpu_runtimes artifacts/b16_384_int8_cpu.onnx [--batches 1,8] [--seconds 6] [--rounds 4]

Both runtimes run the same verified file through ``vitrt.Engine`` (``backend=``), model only (a uint8
batch in, outputs out), in alternating rounds in one process, so that a slow spell of a noisy machine
hits both alike. Reports each one's median latency per batch, the ratio OpenVINO / ONNX Runtime in
speed, what ``vitrt.fleet.cpu_backend`` picks here, and whether the measurement agrees with it.
Writes reports/cpu_runtimes.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .common import REPORTS, machine_info, markdown_table, write_reports

RUNTIMES = ("onnxruntime", "openvino")


def run(artifact: Path, batches: list[int], seconds: float, rounds: int, log=print) -> dict:
    import vitrt
    from vitrt.fleet import Machine, cpu_backend

    engines = {name: vitrt.Engine(artifact, backend=name) for name in RUNTIMES}
    precision = engines["onnxruntime"].metadata.precision
    times: dict[tuple[str, int], list[float]] = {(r, b): [] for r in RUNTIMES for b in batches}
    try:
        for b in batches:
            x = np.random.default_rng(b).integers(0, 256, (b, *engines["onnxruntime"].metadata.item_shape), dtype=np.uint8)
            for e in engines.values():  # warm-up: OpenVINO compiles batch 1 and 2 for their static shape
                e.infer(x)
            for k in range(rounds):
                order = RUNTIMES if k % 2 == 0 else RUNTIMES[::-1]
                for name in order:
                    stop = time.perf_counter() + seconds / rounds
                    while True:
                        t0 = time.perf_counter()
                        engines[name].infer(x)
                        times[(name, b)].append(time.perf_counter() - t0)
                        if time.perf_counter() > stop:
                            break
                log(f"batch {b}: " + ", ".join(f"{n} {1000 * np.median(times[(n, b)]):.1f} ms" for n in RUNTIMES))
        threads = {n: e.threads for n, e in engines.items()}
    finally:
        for e in engines.values():
            e.close()
    picked, why = cpu_backend(Machine.here(), precision)
    rows = []
    for b in batches:
        ort_ms, ov_ms = (1000 * float(np.median(times[(n, b)])) for n in RUNTIMES)
        rows.append({"batch": b, "onnxruntime_ms": ort_ms, "openvino_ms": ov_ms, "openvino_speedup": ort_ms / ov_ms,
                     "iters": {n: len(times[(n, b)]) for n in RUNTIMES}})
    faster = "openvino" if all(r["openvino_speedup"] > 1 for r in rows) else \
        "onnxruntime" if all(r["openvino_speedup"] < 1 for r in rows) else "mixed"
    return {"artifact": str(artifact), "precision": precision, "threads": threads, "rounds": rounds, "rows": rows,
            "rule_picks": picked, "rule_why": why, "measured_faster": faster,
            "rule_holds": faster in (picked, "mixed")}


def markdown(report: dict, machine: dict) -> str:
    rows = [[r["batch"], f"{r['onnxruntime_ms']:.1f}", f"{r['openvino_ms']:.1f}", f"{r['openvino_speedup']:.2f}x"]
            for r in report["rows"]]
    return "\n".join([
        f"# ONNX Runtime vs OpenVINO: {Path(report['artifact']).name} ({report['precision']})", "",
        f"CPU: {machine['cpu']} ({', '.join(machine['cpu_isa'])}), threads {report['threads']}, "
        f"{report['rounds']} alternating rounds per batch", "",
        markdown_table(["batch", "ONNX Runtime p50 ms", "OpenVINO p50 ms", "OpenVINO speed / ORT"], rows), "",
        f"vitrt.fleet.cpu_backend picks **{report['rule_picks']}** here ({report['rule_why']}); measured faster: "
        f"**{report['measured_faster']}**: the rule {'holds' if report['rule_holds'] else 'does NOT hold'} on this CPU.", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="a CPU .onnx artifact (int8-cpu or fp32)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                   help="comma-separated batch sizes (default: 1,8)")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per runtime and batch (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per batch (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    args = p.parse_args(argv)
    report = run(args.artifact, args.batches, args.seconds, args.rounds)
    machine = machine_info()
    text = markdown(report, machine)
    write_reports("cpu_runtimes", {"machine": machine, **report}, text, folder=args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
