"""Batch-job benchmark (`make bench-batch`): `vitrt embed` end to end from JPEG files against the model
alone on pre-made batches and against a naive ``Engine.embed`` loop, in one run on one artifact, with
the stage split (decode, preprocess, model) and a workers x batch-size sweep that sets the defaults in
vitrt/jobs/local.py. Writes reports/batch.{json,md}.

    python -m benchmarks.batch --artifacts artifacts        # the fleet rule's choice (int8-cpu on a CPU)
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import REPORTS, chosen_artifact, machine_info, markdown_table, write_reports

#: Expected GPU throughput for the decode-worker arithmetic (not measured: no GPU run exists). ViT-B/16
#: at 384 is 49.4 GMACs = 98.8 GFLOP an image; an H100 SXM's dense FP16 tensor peak is 989 TFLOP/s; at
#: 40 % of peak, a good figure for a TensorRT transformer at batch 32, that is 4000 img/s.
GPU_EXPECTED_IMG_S = 0.40 * 989e12 / 98.8e9


def make_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs at camera-like sizes (640x480 and 1024x768), from the photos scikit-image ships."""
    from PIL import Image

    from export.images import builtin_photos

    photos = [Image.open(p).convert("RGB") for p in builtin_photos()]
    out = []
    for i in range(n):
        size = (640, 480) if i % 2 else (1024, 768)
        img = photos[i % len(photos)].resize(size)
        path = folder / f"d{i % 4}" / f"img{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="JPEG", quality=90)
        out.append(path)
    return out


def stages(engine, files: list[Path], batch: int) -> dict:
    """Per image, serially: decode (Image.open + convert, what timm's loader does), preprocess (vitrt's
    resize and crop of the decoded image), model (Engine.infer at ``batch``), in ms."""
    from PIL import Image

    from vitrt.preprocess import resize_center_crop

    dec, pre, crops = [], [], []
    for f in files:
        t0 = time.perf_counter()
        with Image.open(io.BytesIO(f.read_bytes())) as im:
            rgb = im.convert("RGB")
        t1 = time.perf_counter()
        crops.append(resize_center_crop(rgb, engine.metadata.data_config))
        t2 = time.perf_counter()
        dec.append(t1 - t0)
        pre.append(t2 - t1)
    x = np.stack(crops[:batch])
    engine.infer(x)
    t0, reps = time.perf_counter(), max(2, 24 // batch)
    for _ in range(reps):
        engine.infer(x)
    model = (time.perf_counter() - t0) / (reps * batch)
    return {"decode_ms": 1000 * float(np.median(dec)), "preprocess_ms": 1000 * float(np.median(pre)),
            "model_ms": 1000 * model, "batch": batch}


def run(artifact: Path, out: Path, n: int = 48, workers=(1, 2, 4), batches=(1, 4, 8, 16), log=print) -> dict:
    import vitrt
    from vitrt.jobs.local import run as job

    results: dict = {"artifact": str(artifact), "machine": machine_info(), "images": n}
    with tempfile.TemporaryDirectory() as tmp, vitrt.Engine(artifact) as engine:
        files = make_jpegs(Path(tmp) / "src", n)
        split = stages(engine, files, 8)
        results["stages"] = split
        log(f"stages (ms/img): decode {split['decode_ms']:.1f}, preprocess {split['preprocess_ms']:.1f}, "
            f"model {split['model_ms']:.1f} (batch 8)")
        def model_only_at(b: int) -> float:
            x = np.stack([engine.preprocess(f) for f in files[:b]])
            engine.infer(x)
            t0, reps = time.perf_counter(), max(3, 32 // b)
            for _ in range(reps):
                engine.infer(x)
            return reps * b / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for f in files:
            engine.embed(f)
        naive = n / (time.perf_counter() - t0)
        model_only, sweep = {}, []
        for b in batches:  # model-only measured right beside the runs it is compared with (a noisy machine)
            model_only[b] = model_only_at(b)
            for w in workers:
                s = job(engine, Path(tmp) / "src", Path(tmp) / f"out-{w}-{b}", workers=w, batch_size=b,
                        progress=False, log=lambda m: None)
                sweep.append({"workers": w, "batch": b, "img_s": s["img_s"], "vs_model": s["img_s"] / model_only[b]})
                log(f"workers {w} batch {b:2d}: {s['img_s']:.2f} img/s = {sweep[-1]['vs_model']:.2f} x model-only")
    best = max(sweep, key=lambda r: r["img_s"])
    per_image_cpu = split["decode_ms"] + split["preprocess_ms"]
    results.update(model_only={str(k): v for k, v in model_only.items()}, naive_img_s=naive, sweep=sweep, best=best,
                   gpu={"expected_img_s": GPU_EXPECTED_IMG_S, "decode_and_preprocess_ms_per_core": per_image_cpu,
                        "workers_needed": GPU_EXPECTED_IMG_S * per_image_cpu / 1000})
    write_reports("batch", results, to_markdown(results), folder=out)
    return results


def to_markdown(r: dict) -> str:
    s, g, b = r["stages"], r["gpu"], r["best"]
    rows = [[x["workers"], x["batch"], f"{x['img_s']:.2f}", f"{r['model_only'][str(x['batch'])]:.2f}", f"{x['vs_model']:.2f}"]
            for x in r["sweep"]]
    # on a CPU the model and the decoding share the same cores: CPU time per image decides
    cpu = s["decode_ms"] + s["preprocess_ms"] + s["model_ms"] * r["machine"]["cores"]
    share = (s["decode_ms"] + s["preprocess_ms"]) / cpu
    bound = f"decode + preprocess ({100 * share:.0f} % of the CPU time)" if share > 0.5 else \
        f"the model ({100 * (1 - share):.0f} % of the CPU time; decode + preprocess {100 * share:.0f} %)"
    return "\n".join([
        f"Batch job on {Path(r['artifact']).name}, {r['images']} JPEGs (640x480 and 1024x768), "
        f"{r['machine']['cpu']} ({r['machine']['cores']} cores)", "",
        markdown_table(["workers", "batch", "end to end img/s", "model-only img/s", "end to end / model"], rows, "rrrrr"), "",
        f"Best: workers {b['workers']}, batch {b['batch']}: {b['img_s']:.2f} img/s = {b['vs_model']:.2f} x model-only; "
        f"naive Engine.embed loop over the files: {r['naive_img_s']:.2f} img/s ({b['img_s'] / r['naive_img_s']:.2f}x).", "",
        f"Stages per image (serial medians): decode {s['decode_ms']:.1f} ms, preprocess {s['preprocess_ms']:.1f} ms, "
        f"model {s['model_ms']:.1f} ms at batch {s['batch']}: the job is bound by {bound}.", "",
        f"A GPU plan at an expected {g['expected_img_s']:.0f} img/s needs {g['expected_img_s']:.0f} x "
        f"{g['decode_and_preprocess_ms_per_core']:.1f} ms = {g['workers_needed']:.0f} cores of decoding and preprocessing "
        "(not measured on a GPU)."])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifacts folder (default: %(default)s)")
    p.add_argument("--artifact", type=Path, default=None, help="this artifact instead (default: the fleet rule's)")
    p.add_argument("--images", type=int, default=48, help="JPEGs to make (default: %(default)s)")
    p.add_argument("--workers", default="1,2,4", help="worker counts (default: %(default)s)")
    p.add_argument("--batches", default="1,4,8,16", help="batch sizes (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    args = p.parse_args(argv)
    artifact = chosen_artifact(args.artifact, args.artifacts)
    r = run(artifact, args.out, args.images, [int(w) for w in args.workers.split(",")],
            [int(b) for b in args.batches.split(",")])
    print(to_markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
