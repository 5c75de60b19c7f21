"""The GPU check behind benchmarks/gpu_check.sh: one run, a summary, a JSON report, non-zero on failure.

Made for a lent GPU machine as it is: its system python with torch, timm, onnx, cuda-python and CPU
onnxruntime; no TensorRT and no network. TensorRT-RTX travels as wheels (benchmarks/gpu_payload.sh).

Checks, each PASS / FAIL / SKIP (with the reason):
  gpu       a CUDA device: name, compute capability, driver
  cuda      vitrt.cuda: pinned + device buffers, async copies (and their bandwidth), stream, CUDA graph
  rtx       a TensorRT-RTX plan of the small test ViT, built here ahead of time (as on a CPU): on a GPU
            TensorRT-RTX supports, for that GPU, run end to end: `vitrt verify` (the parity gate) and
            batches 3, 1, 3, 1, 3 with new data each time, graphs on against graphs off; on any other
            (an H100/H200 is sm_90), for sm_89: get_engine_validity must say UNSUPPORTED_CC and
            vitrt.Engine must refuse it with an ArtifactError naming the GPU, the targets and the fix
  tensorrt  the same A->B->A graph run on a full-TensorRT plan, when `tensorrt` is importable here
  torch     ViT-B/16-384 (random init) throughput in PyTorch at batch 1/8/32/64: FP32 eager, FP16
            eager, FP16 torch.compile and FP16 replayed as a CUDA graph, beside each other
  pytest    the tests marked `gpu`
Writes reports/gpu/<gpu>.json (--out-dir). Finishes in under 8 minutes on an H100 (--budget-s).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

RESULTS: list[dict] = []
BATCHES = (1, 8, 32, 64)


def record(name: str, status: str, detail: str = "", **data) -> None:
    RESULTS.append({"check": name, "status": status, "detail": detail, **data})
    print(f"[{status:4}] {name}: {detail}", flush=True)


def check(name):
    def wrap(fn):
        def run(*a, **k):
            try:
                return fn(*a, **k)
            except Exception as exc:  # a check failing must not stop the others
                record(name, "FAIL", f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=5))
        return run
    return wrap


@check("gpu")
def check_gpu() -> dict | None:
    from vitrt import cuda

    n = cuda.gpu_count()
    if n == 0:
        record("gpu", "FAIL", "cudaGetDeviceCount reports no GPU")
        return None
    props = cuda.device_properties(0)
    props["driver"] = cuda.driver_version()
    record("gpu", "PASS", f"{n} device(s); 0 = {props['name']}, sm {props['compute_capability']}, "
                          f"driver CUDA {props['driver']}", **props)
    return props


@check("cuda")
def check_cuda() -> None:
    from vitrt import cuda

    n = 64 << 20
    stream = cuda.Stream()
    a, b, d = cuda.HostBuffer(n, np.uint8), cuda.HostBuffer(n, np.uint8), cuda.DeviceBuffer(n)
    a.array[:] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)
    t0 = time.perf_counter()
    for _ in range(10):
        cuda.memcpy_htod_async(d, a, n, stream)
    stream.synchronize()
    h2d = 10 * n / (time.perf_counter() - t0) / 1e9
    t0 = time.perf_counter()
    for _ in range(10):
        cuda.memcpy_dtoh_async(b, d, n, stream)
    stream.synchronize()
    d2h = 10 * n / (time.perf_counter() - t0) / 1e9
    assert np.array_equal(a.array, b.array), "round trip through device memory changed the data"
    a.array[:] = 3
    g = cuda.Graph(stream, lambda s: (cuda.memcpy_htod_async(d, a, n, s), cuda.memcpy_dtoh_async(b, d, n, s)))
    g.launch()
    stream.synchronize()
    assert (b.array == 3).all(), "graph replay did not run the captured copies"
    for o in (g, a, b, d, stream):
        o.close()
    record("cuda", "PASS", f"pinned/device buffers, async copies (H2D {h2d:.1f} GB/s, D2H {d2h:.1f} GB/s), "
                           "stream sync, graph capture + replay", h2d_gbps=h2d, d2h_gbps=d2h)


def a_b_a(plan: Path, seed: int = 0) -> float:
    """Batches 3, 1, 3, 1, 3 with new data each time through ``plan`` with CUDA graphs on and off: the
    largest difference between the two (a graph replayed on another shape's setup gives stale rows).
    Raises when it exceeds FP16 rounding (1e-2 absolute on O(1) outputs)."""
    import vitrt

    rng, worst = np.random.default_rng(seed), 0.0
    with vitrt.Engine(plan, cuda_graphs=True) as graphs, vitrt.Engine(plan, cuda_graphs=False) as plain:
        for n in (3, 1, 3, 1, 3):
            x = rng.integers(0, 256, (n, 384, 384, 3), dtype=np.uint8)
            a, b = graphs.infer(x), plain.infer(x)
            worst = max(worst, *(float(np.abs(a[k] - b[k]).max()) for k in a))
    if worst > 1e-2:
        raise AssertionError(f"graphs on vs off differ by {worst:.3g} over batches 3,1,3,1,3 (stale replay?)")
    return worst


def rtx_verdict(trt, validity, bits: int, gpu: dict, target: str = "8.9") -> tuple[str, str]:
    """What TensorRT-RTX's answer for a plan built for ``target`` means on ``gpu``: (status, detail)."""
    reasons = [n for n, v in trt.EngineInvalidityDiagnostics.__members__.items() if int(bits) & int(v)]
    supported = "SM" + gpu.get("compute_capability", "0.0").replace(".", "") in trt.ComputeCapability.__members__
    if validity != trt.EngineValidity.INVALID:
        if gpu.get("compute_capability") == target:
            return "PASS", f"plan valid on {gpu['name']} (its target)"
        return "FAIL", f"get_engine_validity says {validity} for an sm_{target.replace('.', '')} plan on {gpu.get('name')}; expected INVALID"
    if not supported and "UNSUPPORTED_CC" in reasons:
        return "PASS", f"refused as expected: INVALID, {', '.join(reasons)} on {gpu['name']} (sm {gpu['compute_capability']})"
    return "FAIL", (f"INVALID with reasons {reasons or 'none'} on {gpu.get('name', 'no GPU')}; expected UNSUPPORTED_CC "
                    "(TensorRT-RTX has no target for this GPU)" if not supported else
                    f"INVALID with reasons {reasons}: this RTX GPU should run a plan rebuilt for it")


@check("rtx")
def check_rtx(work: Path, gpu: dict) -> None:
    try:
        import tensorrt_rtx as trt
    except ImportError:
        record("rtx", "SKIP", "tensorrt_rtx is not installed here (benchmarks/gpu_payload.sh carries its wheels)")
        return
    import vitrt
    from export.build import BuildOptions, build
    from vitrt.errors import ArtifactError

    t0 = time.perf_counter()
    cc = gpu.get("compute_capability", "0.0")
    supported = "SM" + cc.replace(".", "") in trt.ComputeCapability.__members__
    target = cc if supported else "8.9"  # a supported RTX GPU gets a plan for itself, run end to end
    built = build(BuildOptions(weights="random", model_kwargs={"depth": 2, "embed_dim": 64, "num_heads": 2},
                               output_dir=work, name="small", precision="fp16", plan="yes", trt="tensorrt-rtx",
                               targets="sm" + target.replace(".", ""), force=True), log=lambda m: None)
    plan = built["plan_fp16"]
    data = plan.read_bytes()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    validity, bits = runtime.get_engine_validity(data[: runtime.engine_header_size])
    status, detail = rtx_verdict(trt, validity, bits, gpu, target)
    message = None
    if not supported:
        try:
            vitrt.Engine(plan).close()
            status, detail = "FAIL", detail + "; but vitrt.Engine opened the plan"
        except ArtifactError as exc:
            message = str(exc)
            wanted = [gpu["name"], "sm_89", "make engine TRT=tensorrt" if gpu["compute_capability"] == "9.0" else "TARGETS="]
            missing = [w for w in wanted if w not in message]
            if missing:
                status, detail = "FAIL", detail + f"; vitrt's error lacks {missing}: {message}"
            else:
                detail += "; vitrt.Engine refuses it naming the GPU, the targets and the fix"
    else:
        with vitrt.Engine(plan) as engine:
            report = engine.verify()
        worst = a_b_a(plan)
        status = "PASS" if report["passed"] and status == "PASS" else "FAIL"
        detail += (f"; vitrt verify {'passed' if report['passed'] else 'FAILED'}; batches 3,1,3,1,3 graphs on vs off "
                   f"max |diff| {worst:.2g}")
    record("rtx", status, detail + f" ({time.perf_counter() - t0:.0f} s, TensorRT-RTX {trt.__version__})",
           validity=str(validity), diagnostics=int(bits), engine_error=message, plan_bytes=len(data))


def throughput(fn, x, iters: int, warmup: int = 3) -> dict:
    """Mean latency (CUDA events) and images/s of ``fn(x)`` on the current stream."""
    import torch

    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(x)
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end) / iters
    return {"ms": round(ms, 3), "img_s": round(len(x) * 1000 / ms, 1)}


def cuda_graph_fn(model, x):
    """``model`` on a static input, captured once as a CUDA graph; the returned fn replays it."""
    import torch

    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(static)

    def replay(inp):
        static.copy_(inp)
        graph.replay()
        return out
    return replay


@check("torch")
def check_torch(deadline: float, batches=BATCHES) -> None:
    try:
        import timm
        import torch
    except ImportError as exc:
        record("torch", "SKIP", f"{exc.name} not installed")
        return
    if not torch.cuda.is_available():
        record("torch", "FAIL", "torch.cuda.is_available() is False on a GPU machine")
        return
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 here, as in vitrt's plans
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    fp32 = timm.create_model("vit_base_patch16_384", pretrained=False).cuda().eval()
    fp16 = timm.create_model("vit_base_patch16_384", pretrained=False).cuda().eval().half()
    compiled = torch.compile(fp16)
    rows: dict[str, dict] = {}
    with torch.inference_mode():
        for bs in batches:
            if time.time() > deadline:
                record("torch", "SKIP", f"time budget reached before batch {bs}")
                break
            iters = max(5, 200 // bs)
            x32 = torch.randn(bs, 3, 384, 384, device="cuda")
            x16 = x32.half()
            row = {"fp32_eager": throughput(fp32, x32, iters), "fp16_eager": throughput(fp16, x16, iters)}
            t0 = time.perf_counter()
            row["fp16_compile"] = throughput(compiled, x16, iters)
            row["fp16_compile"]["first_call_s"] = round(time.perf_counter() - t0, 1)
            row["fp16_cuda_graph"] = throughput(cuda_graph_fn(fp16, x16), x16, iters)
            base = row["fp32_eager"]["img_s"]
            for r in row.values():
                r["vs_fp32_eager"] = round(r["img_s"] / base, 2)
            rows[str(bs)] = row
            print("  batch %3d: " % bs + ", ".join(f"{k} {v['img_s']:.0f} img/s" for k, v in row.items()), flush=True)
    record("torch", "PASS", "ViT-B/16-384 img/s (fp32 eager / fp16 eager / fp16 compile / fp16 graph): " + "; ".join(
        f"b{b} " + " / ".join(f"{r[k]['img_s']:.0f}" for k in r) for b, r in rows.items()), throughput=rows,
           tf32=False, torch=torch.__version__)


@check("tensorrt")
def check_tensorrt(work: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        record("tensorrt", "SKIP", "full TensorRT is not installed here (the lent machines have none)")
        return
    from export.build import BuildOptions, build

    built = build(BuildOptions(weights="random", model_kwargs={"depth": 2, "embed_dim": 64, "num_heads": 2},
                               output_dir=work, name="small", precision="fp16", plan="yes", trt="tensorrt",
                               force=True), log=lambda m: None)
    worst = a_b_a(built["plan_fp16"])
    record("tensorrt", "PASS", f"full TensorRT fp16 plan: batches 3,1,3,1,3 graphs on vs off max |diff| {worst:.2g}")


@check("pytest")
def check_pytest() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                          capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    record("pytest", "PASS" if proc.returncode == 0 else "FAIL", tail)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "gpu"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=Path("reports/gpu"),
                   help="where <gpu>.json goes (default: %(default)s)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting new batch sizes after this many seconds (default: %(default)s)")
    p.add_argument("--skip", default="", help="comma-separated checks to skip, e.g. pytest (default: none)")
    args = p.parse_args(argv)
    deadline = time.time() + args.budget_s
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t0 = time.perf_counter()
    props = check_gpu()
    if props is not None:
        if "cuda" not in skip:
            check_cuda()
        if "rtx" not in skip:
            check_rtx(args.out_dir / "rtx_work", props)
        if "tensorrt" not in skip:
            check_tensorrt(args.out_dir / "tensorrt_work")
        if "torch" not in skip:
            check_torch(deadline)
        if "pytest" not in skip:
            check_pytest()
    out = args.out_dir / f"{slug((props or {}).get('name', 'no-gpu'))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"gpu": props, "results": RESULTS, "seconds": round(time.perf_counter() - t0, 1),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2, default=str))
    failed = [r["check"] for r in RESULTS if r["status"] == "FAIL"]
    print(f"\nsummary: {sum(r['status'] == 'PASS' for r in RESULTS)} passed, {len(failed)} failed, "
          f"{sum(r['status'] == 'SKIP' for r in RESULTS)} skipped in {time.perf_counter() - t0:.0f} s"
          + (f" (failed: {', '.join(failed)})" if failed else "") + f"; report: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
