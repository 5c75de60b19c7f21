"""Preprocessing benchmark: vitrt (Pillow + numpy) vs timm's eval transform on the same JPEGs.

Checks first that both produce the same uint8 crop (and the same normalized tensor to float32
rounding), then times each, interleaved in rounds so that machine noise hits both alike. Reports
images/s on one core and the ratio. ``python -m benchmarks.preprocess --help``.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

from .common import cpu_name


def make_jpegs(sizes=((512, 512), (640, 427), (1024, 768), (451, 300)), quality: int = 90) -> list[tuple[str, bytes]]:
    """JPEG-encoded versions of scikit-image's photos at the given sizes (deterministic)."""
    from PIL import Image

    from export.images import builtin_photos

    out = []
    photos = builtin_photos(gray=False)
    for i, (w, h) in enumerate(sizes):
        img = Image.open(photos[i % len(photos)]).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        out.append((f"{photos[i % len(photos)].stem}_{w}x{h}.jpg", buf.getvalue()))
    return out


def run(rounds: int = 5, per_round: int = 20, threads: int = 1) -> dict:
    import timm.data
    import torch
    from PIL import Image

    from vitrt.preprocess import DEFAULT_DATA_CONFIG, normalize_nchw, preprocess

    torch.set_num_threads(threads)
    tf = timm.data.create_transform(**DEFAULT_DATA_CONFIG, is_training=False)
    resize_crop = timm.data.create_transform(**DEFAULT_DATA_CONFIG, is_training=False).transforms[:2]
    jpegs = make_jpegs()

    def timm_full(data: bytes):
        return tf(Image.open(io.BytesIO(data)).convert("RGB"))

    def vitrt_uint8(data: bytes):
        return preprocess(data)

    def vitrt_float(data: bytes):
        return normalize_nchw(preprocess(data)[None])

    identical = True
    for name, data in jpegs:
        crop = Image.open(io.BytesIO(data)).convert("RGB")
        for t in resize_crop:
            crop = t(crop)
        identical &= bool(np.array_equal(np.asarray(crop), preprocess(data)))
        diff = float(np.abs(timm_full(data).numpy() - vitrt_float(data)[0]).max())
        identical &= diff <= 1e-6
    if not identical:
        raise SystemExit("vitrt's preprocessing differs from timm's: not timing a wrong result")

    candidates = {"timm create_transform (PIL -> normalized tensor)": timm_full,
                  "vitrt.preprocess (uint8 crop; normalization in-graph)": vitrt_uint8,
                  "vitrt.preprocess + numpy normalize (float NCHW)": vitrt_float}
    times = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():  # interleaved: noise hits every candidate alike
            t0 = time.perf_counter()
            for _ in range(per_round):
                for _, data in jpegs:
                    fn(data)
            times[name].append((time.perf_counter() - t0) / (per_round * len(jpegs)))
    base = np.median(times["timm create_transform (PIL -> normalized tensor)"])
    results = {name: {"ms_per_image": 1e3 * float(np.median(t)), "images_per_s_per_core": float(1 / np.median(t)),
                      "speedup_vs_timm": float(base / np.median(t))} for name, t in times.items()}
    return {"images": [n for n, _ in jpegs], "identical_to_timm": identical, "threads": threads,
            "rounds": rounds, "per_round": per_round, "cpu": cpu_name(), "results": results}


def to_markdown(res: dict) -> str:
    lines = [f"Preprocessing, {len(res['images'])} JPEGs ({', '.join(res['images'])}), {res['threads']} thread, "
             f"{res['cpu']}; outputs identical to timm: {res['identical_to_timm']}", "",
             "| pipeline | ms / image | images/s per core | vs timm |", "|---|---:|---:|---:|"]
    for name, r in res["results"].items():
        lines.append(f"| {name} | {r['ms_per_image']:.2f} | {r['images_per_s_per_core']:.0f} | {r['speedup_vs_timm']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="vitrt vs timm preprocessing speed, after checking they agree.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--per-round", type=int, default=20, help="passes over the JPEGs per round (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="write preprocess.json/.md in this folder (default: print only)")
    args = p.parse_args(argv)
    res = run(args.rounds, args.per_round)
    md = to_markdown(res)
    print(md)
    if args.out:
        from .common import write_reports

        write_reports("preprocess", res, md, folder=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
