"""The GPU check behind benchmarks/gpu_check.sh: one run, a summary, a non-zero exit on failure.

Checks, each PASS / FAIL / SKIP (with the reason):
  gpu          a CUDA device, its name, compute capability and driver
  cuda         vitrt.cuda: pinned + device buffers, async copies (and their bandwidth), stream, CUDA graph
  torch        PyTorch on the GPU (when installed): ViT-B/16-384 eager FP16 throughput, the baseline
  plans        (TensorRT installed) small-ViT fp16/int8 plans and, with --full, ViT-B/16-384 fp16/int8
               (+ fp8 on compute capability >= 8.9), each through its parity gate, and a short
               throughput run per plan
  pytest-gpu   the tests marked `gpu`
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

RESULTS: list[dict] = []


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
    from vitrt.gpu import gpu_count

    n = gpu_count()
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


@check("torch")
def check_torch() -> None:
    try:
        import timm
        import torch
    except ImportError as exc:
        record("torch", "SKIP", f"{exc.name} not installed")
        return
    if not torch.cuda.is_available():
        record("torch", "FAIL", "torch.cuda.is_available() is False on a GPU machine")
        return
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_384", pretrained=False).cuda().eval().half()
    rows = {}
    with torch.inference_mode():
        for bs in (1, 8, 32):
            x = torch.randn(bs, 3, 384, 384, device="cuda", dtype=torch.half)
            for _ in range(3):
                model(x)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            iters = 20
            for _ in range(iters):
                model(x)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end) / iters
            rows[bs] = {"ms": ms, "img_s": bs * 1000 / ms}
    record("torch", "PASS", "ViT-B/16-384 eager FP16: " + ", ".join(f"b{b} {r['img_s']:.0f} img/s" for b, r in rows.items()),
           eager_fp16=rows)


def _throughput(plan: Path, batches=(1, 8, 32), seconds: float = 2.0) -> dict:
    import vitrt

    out = {}
    with vitrt.Engine(plan) as e:
        for bs in batches:
            if bs > e.metadata.max_batch:
                continue
            x = np.random.default_rng(0).integers(0, 256, (bs, *e.metadata.item_shape), dtype=np.uint8)
            for _ in range(3):
                e.infer(x)
            lat, t_end = [], time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                e.infer(x)
                lat.append(time.perf_counter() - t0)
            lat_ms = 1e3 * np.array(lat)
            out[bs] = {"p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
                       "img_s": float(bs * len(lat) / lat_ms.sum() * 1e3)}
    return out


@check("plans")
def check_plans(full: bool, props: dict | None) -> None:
    try:
        import tensorrt as trt
    except ImportError:
        record("plans", "SKIP", "TensorRT is not installed here (make engine installs it where nvidia-smi works)")
        return
    from export.build import BuildOptions, build

    work = Path("reports/gpu_check")
    small = {"depth": 2, "embed_dim": 64, "num_heads": 2}
    gate = [f"{p}.photos.{o}.{m}={v}" for p in ("int8", "fp8") for o in ("logits", "embedding")
            for m, v in (("cosine_min", 0.95), ("cosine_mean", 0.97))]  # toy ViT: see tests/test_precision.py
    cc = tuple(int(x) for x in (props or {}).get("compute_capability", "0.0").split("."))
    precisions = "fp16,int8" + (",fp8" if cc >= (8, 9) else "")
    t0 = time.perf_counter()
    built = build(BuildOptions(weights="random", model_kwargs=small, output_dir=work / "small", name="small",
                               precision=precisions, calib_dir="builtin", plan="yes", gate=gate))
    record("plans", "PASS", f"small ViT {precisions} plans built, each passed its parity gate "
                            f"({time.perf_counter() - t0:.0f} s), TensorRT {trt.__version__}")
    if not full:
        return
    built = build(BuildOptions(weights="random", output_dir=work / "full", precision=precisions, calib_dir="builtin",
                               plan="yes"))
    for key, plan in built.items():
        if key.startswith("plan_"):
            tp = _throughput(plan)
            record(f"plans/{plan.name}", "PASS", "parity gate held; " + ", ".join(
                f"b{b} {r['img_s']:.0f} img/s p50 {r['p50_ms']:.2f} ms" for b, r in tp.items()), throughput=tp)


@check("pytest-gpu")
def check_pytest() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    record("pytest-gpu", "PASS" if proc.returncode == 0 else "FAIL", tail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="also build and time the full ViT-B/16-384 plans (default: off)")
    p.add_argument("--out", type=Path, default=Path("reports/gpu_check.json"), help="JSON summary (default: %(default)s)")
    args = p.parse_args(argv)
    props = check_gpu()
    if props is not None:
        check_cuda()
        check_torch()
        check_plans(args.full, props)
        check_pytest()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": RESULTS, "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    failed = [r["check"] for r in RESULTS if r["status"] == "FAIL"]
    print(f"\nsummary: {sum(r['status'] == 'PASS' for r in RESULTS)} passed, {len(failed)} failed, "
          f"{sum(r['status'] == 'SKIP' for r in RESULTS)} skipped" + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
