"""Load benchmark of `vitrt serve` (`make bench-serve`): the real server on loopback, real JPEGs (the
photos scikit-image ships, re-encoded at quality 90), a concurrency sweep, and beside it, in the same
run and in the serving venv, the in-process ``Engine.predict`` on the same JPEG bytes: the ceiling.

Per concurrency step (1, 2, 4, 8, 16, 32 clients, each sending one image per request, back to back,
for --step-s seconds or --max-requests): accepted img/s, p50/p95/p99 latency of accepted requests,
errors by status, the batch sizes Triton formed (its per-model statistics), and the load generator's
own CPU time per request, so that its cost is not mistaken for the server's. Writes
reports/serve.{json,md,png}. Loopback only; every count and time is bounded; the server is stopped
even when the run fails.

    python -m benchmarks.serve --artifacts artifacts            # the fleet rule's choice (int8-cpu on a CPU)
    python -m benchmarks.serve --artifact artifacts/b16_384_int8_cpu.onnx --step-s 20
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from .common import REPORTS, chosen_artifact, machine_info, markdown_table, percentiles, write_reports
from .serve_process import ServeProcess, serve_python

CONCURRENCY = (1, 2, 4, 8, 16, 32)


def jpegs() -> list[bytes]:
    from PIL import Image

    from export.images import builtin_photos

    out = []
    for path in builtin_photos():
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


CEILING = """
import json, sys, time, vitrt
blobs = [open(p, "rb").read() for p in sys.argv[3:]]
batches, seconds = [int(b) for b in sys.argv[2].split(",")], float(sys.argv[1])
out = {}
with vitrt.Engine({artifact!r}) as e:
    e.predict(blobs[:1])
    for b in batches:
        e.predict(blobs[:b])  # untimed: a batch size's first call pays its per-shape setup
        times, t_end = [], time.monotonic() + seconds
        while time.monotonic() < t_end or len(times) < 3:
            batch = [blobs[(len(times) * b + i) % len(blobs)] for i in range(b)]
            t0 = time.perf_counter(); e.predict(batch); times.append(time.perf_counter() - t0)
        out[b] = times
print(json.dumps(out))
"""


PAIRED = """
import sys, time, vitrt
blobs = [open(p, "rb").read() for p in sys.argv[2:]]
with vitrt.Engine(sys.argv[1]) as e:
    e.predict(blobs[0])
    print("ready", flush=True)
    for line in sys.stdin:  # one call per line: the image's index
        i = int(line)
        t0 = time.perf_counter(); e.predict(blobs[i % len(blobs)])
        print(1000 * (time.perf_counter() - t0), flush=True)
"""


def paired_c1(url: str, model: str, artifact: Path, files: list[Path], n: int) -> dict:
    """Concurrency 1 against the in-process call, alternated: one request to the server, then the same
    JPEG through Engine.predict in a process of the serving venv, ``n`` times. On a machine whose speed
    drifts by 10-30 % over minutes, a server step and a ceiling timed minutes apart differ by more than
    the server's overhead; alternating puts both under the same drift."""
    import tritonclient.http as tc

    blobs = [f.read_bytes() for f in files]
    proc = subprocess.Popen([str(serve_python()), "-c", PAIRED, str(artifact), *map(str, files)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client = tc.InferenceServerClient(url, network_timeout=120)
    server, local = [], []
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the in-process engine did not start (exit {proc.poll()})")
        for i in range(n):
            inp = tc.InferInput("image", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[blobs[i % len(blobs)]]], dtype=np.object_))
            t0 = time.perf_counter()
            client.infer(model, [inp], outputs=[tc.InferRequestedOutput("logits")])
            server.append(1000 * (time.perf_counter() - t0))
            proc.stdin.write(f"{i}\n")
            proc.stdin.flush()
            local.append(float(proc.stdout.readline()))
    finally:
        client.close()
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    a, b = np.array(server), np.array(local)
    return {"n": n, "server_p50": float(np.median(a)), "inprocess_p50": float(np.median(b)),
            "p50_difference_ms": float(np.median(a) - np.median(b)), "median_paired_difference_ms": float(np.median(a - b))}


def ceiling(artifact: Path, files: list[Path], batches: list[int], seconds: float) -> dict:
    """In-process Engine.predict on the JPEG files in the serving venv (the same onnxruntime as the server)."""
    code = CEILING.replace("{artifact!r}", repr(str(artifact)))
    proc = subprocess.run([str(serve_python()), "-c", code, str(seconds), ",".join(map(str, batches)),
                           *map(str, files)], capture_output=True, text=True, timeout=600 + 20 * seconds * len(batches))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {int(b): {"img_s": int(b) * len(t) / sum(t), **percentiles(t)} for b, t in raw.items()}


def _stats(url: str, model: str, headers: dict[str, str]) -> dict:
    """Triton's statistics (an admin API of vitrt serve: ``headers`` carry its token)."""
    req = urllib.request.Request(f"http://{url}/v2/models/{model}/stats", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    inf = s.get("inference_stats", {})
    return {"executions": int(s["execution_count"]), "inferences": int(s["inference_count"]),
            "batches": {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in s.get("batch_stats", [])},
            # cumulative ns over successful requests: Triton's own split of each request's time
            "ns": {k: int(inf.get(k, {}).get("ns", 0)) for k in SERVER_PARTS},
            "successes": int(inf.get("success", {}).get("count", 0))}


#: Triton's per-request statistics (its statistics extension): the whole request inside the server, its
#: wait in the dynamic batcher's queue, and the Python model's execute() (decode, preprocess, inference
#: and responses: all of it happens in compute_infer for a Python-backend model).
SERVER_PARTS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def step(url: str, model: str, blobs: list[bytes], clients: int, seconds: float, max_requests: int,
         admin: dict[str, str]) -> dict:
    """``clients`` closed-loop clients for ``seconds``; ``admin``: the headers with the server's admin token
    (Triton's statistics are an admin API of vitrt serve)."""
    import tritonclient.http as tc

    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    count = [0]
    stop_at = time.monotonic() + seconds

    def worker(k: int) -> None:
        client = tc.InferenceServerClient(url, network_timeout=120)
        try:
            i = k
            while time.monotonic() < stop_at:
                with lock:
                    if count[0] >= max_requests:
                        return
                    count[0] += 1
                inp = tc.InferInput("image", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[blobs[i % len(blobs)]]], dtype=np.object_))
                t0 = time.perf_counter()
                try:
                    client.infer(model, [inp], outputs=[tc.InferRequestedOutput("logits")])
                    dt = time.perf_counter() - t0
                    with lock:
                        lat.append(dt)
                except Exception as exc:
                    key = str(getattr(exc, "status", lambda: "?")() or "?")
                    with lock:
                        errors[key] = errors.get(key, 0) + 1
                i += clients
        finally:
            client.close()

    before, cpu0, t0 = _stats(url, model, admin), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 180)
    wall, cpu1, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF), _stats(url, model, admin)
    sent = len(lat) + sum(errors.values())
    client_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    batches = {b: n - before["batches"].get(b, 0) for b, n in after["batches"].items() if n - before["batches"].get(b, 0)}
    execs = after["executions"] - before["executions"]
    done = after["successes"] - before["successes"]
    server_ms = {k: (after["ns"][k] - before["ns"][k]) / 1e6 / done for k in SERVER_PARTS} if done else {}
    return {"clients": clients, "sent": sent, "accepted": len(lat), "errors": errors, "seconds": wall,
            "img_s": len(lat) / wall, **(percentiles(lat) if lat else {}),
            "p95": float(np.percentile(np.array(lat) * 1000, 95)) if lat else None,
            "mean_batch": (after["inferences"] - before["inferences"]) / execs if execs else None,
            "batch_sizes": batches, "client_cpu_ms_per_request": 1000 * client_cpu / max(sent, 1),
            # mean ms per successful request; the client's mean minus "success" is HTTP and the client
            "server_ms": server_ms, "mean": float(np.mean(lat) * 1000) if lat else None}


def run(artifact: Path, out: Path, step_s: float = 15.0, max_requests: int = 2000, queue: int = 64,
        delay_us: int | None = None, concurrency=CONCURRENCY, log=print) -> dict:
    import tempfile

    from vitrt.artifacts import metadata_of

    blobs = jpegs()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, b in enumerate(blobs):
            files.append(Path(tmp) / f"photo{i}.jpg")
            files[-1].write_bytes(b)
        max_batch = metadata_of(artifact).max_batch
        batch_sizes = sorted({b for b in (1, 2, 4, 8, 16, 32) if b <= max_batch})
        log(f"ceiling: in-process Engine.predict at batches {batch_sizes}")
        ceil = ceiling(artifact, files, batch_sizes, seconds=max(3.0, step_s / 3))
        args = ["--max-queue-size", str(queue)] + (["--queue-delay-us", str(delay_us)] if delay_us is not None else [])
        steps = []
        with ServeProcess(artifact, *args, "--model-name", "m") as srv:
            step(srv.url, "m", blobs, 1, min(3.0, step_s), 5, srv.admin_headers)  # warm-up
            for c in concurrency:
                r = step(srv.url, "m", blobs, c, step_s, max_requests, srv.admin_headers)
                log(f"{c:3d} clients: {r['img_s']:.2f} img/s, p50 {r.get('p50', float('nan')):.0f} ms, "
                    f"p99 {r.get('p99', float('nan')):.0f} ms, mean batch {r['mean_batch'] or 0:.1f}, errors {r['errors']}")
                steps.append(r)
            pairs = max(5, min(40, int(2 * step_s)))
            log(f"concurrency 1 alternated with the in-process call, {pairs} pairs")
            paired = paired_c1(srv.url, "m", artifact, files, pairs)
    best = max(ceil.values(), key=lambda r: r["img_s"])
    sat = max(steps, key=lambda r: r["img_s"])
    goals = {"saturation_vs_ceiling": sat["img_s"] / best["img_s"],
             # from the alternated pairs (paired_c1), not from the sweep's first step and the ceiling's batch 1,
             # which ran minutes apart; that difference is kept below as the sweep's
             "c1_p50_minus_inprocess_b1_p50_ms": paired["p50_difference_ms"],
             "sweep_c1_p50_minus_ceiling_b1_p50_ms": steps[0]["p50"] - ceil[1]["p50"] if steps[0]["accepted"] else None,
             # p99 over p50 at the last (32-client) step, where the server is saturated. Not over the p50 of
             # the fastest step: with closed-loop clients latency grows with their count (Little's law: 32
             # clients wait about 32 / throughput), so a 4-client peak would make any 32-client p99 "8x".
             "c32_p99_over_saturation_p50": (steps[-1]["p99"] / steps[-1]["p50"]) if steps[-1]["accepted"] else None}
    data = {"artifact": str(artifact), "machine": machine_info(), "step_s": step_s, "queue": queue,
            "ceiling": {str(k): v for k, v in ceil.items()}, "steps": steps, "paired_c1": paired, "goals": goals}
    write_reports("serve", data, to_markdown(data), figure(data), folder=out)
    return data


def delay_sweep(artifact: Path, out: Path, delays: list[int], concurrency: list[int], step_s: float,
                max_requests: int, log=print) -> dict:
    """The batching delay's effect: one server per delay, the same client steps (no ceiling)."""
    blobs, rows = jpegs(), []
    for d in delays:
        with ServeProcess(artifact, "--queue-delay-us", str(d), "--model-name", "m") as srv:
            step(srv.url, "m", blobs, 1, min(3.0, step_s), 3, srv.admin_headers)  # warm-up
            for c in concurrency:
                r = step(srv.url, "m", blobs, c, step_s, max_requests, srv.admin_headers)
                rows.append({"delay_us": d, **r})
                log(f"delay {d} us, {c} clients: {r['img_s']:.2f} img/s, p50 {r.get('p50', float('nan')):.0f} ms, "
                    f"mean batch {r['mean_batch'] or 0:.1f}")
    table = markdown_table(["delay us", "clients", "img/s", "p50 ms", "p99 ms", "mean batch"],
                           [[r["delay_us"], r["clients"], f"{r['img_s']:.2f}", f"{r.get('p50', float('nan')):.0f}",
                             f"{r.get('p99', float('nan')):.0f}", f"{r['mean_batch'] or 0:.1f}"] for r in rows], "rrrrrr")
    data = {"artifact": str(artifact), "machine": machine_info(), "rows": rows}
    write_reports("serve_delay", data, f"Batching delay, {Path(artifact).name}, {step_s:.0f} s a step\n\n" + table, folder=out)
    return data


def _ms(x) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def to_markdown(data: dict) -> str:
    rows = [[r["clients"], r["sent"], r["accepted"], ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0",
             f"{r['img_s']:.2f}", f"{r.get('p50', float('nan')):.0f}", f"{r.get('p95') or float('nan'):.0f}",
             f"{r.get('p99', float('nan')):.0f}", f"{r['mean_batch'] or 0:.1f}",
             " ".join(f"{b}x{n}" for b, n in sorted(r["batch_sizes"].items())), f"{r['client_cpu_ms_per_request']:.1f}"]
            for r in data["steps"]]
    ceil = [[b, f"{r['img_s']:.2f}", f"{r['p50']:.0f}"] for b, r in sorted(data["ceiling"].items(), key=lambda kv: int(kv[0]))]
    g = data["goals"]
    return "\n".join([
        f"Serving {Path(data['artifact']).name} on {data['machine']['cpu']} ({data['machine']['cores']} cores), "
        f"{data['step_s']:.0f} s per step, queue {data['queue']}",
        "", markdown_table(["clients", "sent", "accepted", "errors", "img/s", "p50 ms", "p95 ms", "p99 ms", "mean batch",
                            "batches formed", "client CPU ms/req"], rows, "r" * 11),
        "", "In-process ceiling (Engine.predict on the same JPEG bytes, serving venv):", "",
        markdown_table(["batch", "img/s", "p50 ms"], ceil, "rrr"), "",
        f"saturation / ceiling: {g['saturation_vs_ceiling']:.2f}; concurrency-1 p50 minus in-process batch-1 p50, "
        f"alternated ({data['paired_c1']['n']} pairs): {g['c1_p50_minus_inprocess_b1_p50_ms']:.1f} ms "
        f"({data['paired_c1']['server_p50']:.0f} against {data['paired_c1']['inprocess_p50']:.0f}; from the sweep, "
        f"minutes apart: {_ms(g['sweep_c1_p50_minus_ceiling_b1_p50_ms'])}); 32-client p99 / saturation p50: "
        f"{g['c32_p99_over_saturation_p50']:.2f}",
        "", "Where a request's time goes (means, ms; Triton's statistics; the model's execute() is compute infer):", "",
        markdown_table(["clients", "client mean", "in server", "queue", "compute input", "compute infer",
                        "compute output", "outside the server"],
                       [[r["clients"], f"{r['mean']:.1f}", *(f"{r['server_ms'][k]:.1f}" for k in SERVER_PARTS),
                         f"{r['mean'] - r['server_ms']['success']:.1f}"] for r in data["steps"] if r.get("server_ms")],
                       "r" * 8)])


def figure(data: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    cs = [r["clients"] for r in data["steps"]]
    a.plot(cs, [r["img_s"] for r in data["steps"]], marker="o", label="vitrt serve")
    a.axhline(max(r["img_s"] for r in data["ceiling"].values()), ls="--", c="gray", label="in-process ceiling")
    a.set_xscale("log", base=2), a.set_xlabel("clients"), a.set_ylabel("img/s"), a.legend()
    for q in ("p50", "p95", "p99"):
        b.plot(cs, [r.get(q) or np.nan for r in data["steps"]], marker="o", label=q)
    b.set_xscale("log", base=2), b.set_xlabel("clients"), b.set_ylabel("ms"), b.legend(), b.set_title("accepted requests")
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                   help="artifacts folder: the fleet rule picks (default: %(default)s)")
    p.add_argument("--artifact", type=Path, default=None, help="this artifact instead (default: none)")
    p.add_argument("--step-s", type=float, default=15.0, help="seconds per concurrency step (default: %(default)s)")
    p.add_argument("--max-requests", type=int, default=2000, help="requests per step at most (default: %(default)s)")
    p.add_argument("--queue", type=int, default=64, help="the server's --max-queue-size (default: %(default)s)")
    p.add_argument("--queue-delay-us", type=int, default=None, help="the server's batching delay (default: its own)")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="client counts (default: %(default)s)")
    p.add_argument("--delays", default=None, metavar="US,US,...",
                   help="instead: sweep the batching delay at --concurrency (default: none)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    args = p.parse_args(argv)
    artifact = chosen_artifact(args.artifact, args.artifacts)
    if args.delays:
        delay_sweep(artifact, args.out, [int(d) for d in args.delays.split(",")],
                    [int(c) for c in args.concurrency.split(",")], args.step_s, args.max_requests)
        print((args.out / "serve_delay.md").read_text())
        return 0
    data = run(artifact, args.out, args.step_s, args.max_requests, args.queue, args.queue_delay_us,
               [int(c) for c in args.concurrency.split(",")])
    print(to_markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
