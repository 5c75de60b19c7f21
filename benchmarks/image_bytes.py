"""How many bytes a legitimate image has: the measurement behind ``vitrt serve --max-image-bytes``
(MAX_IMAGE_BYTES in vitrt/serving/repository.py).

    python -m benchmarks.image_bytes [--megapixels 12,24,48,89] [--photos astronaut,coffee]

Real photos (scikit-image's) resized to camera resolutions up to vitrt's decompression-bomb limit
(``max_pixels``, 89.5 MP), with sensor-like grain (Gaussian, sigma 3 levels) so that they compress like
camera output rather than like a smooth upscale, encoded as a camera or phone would (JPEG quality 95,
4:2:0), as PNG, and as WebP (quality 90); for each: its size, and the time vitrt takes to decode and
crop it (``vitrt.preprocess``). Writes reports/image_bytes.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

from .common import REPORTS, machine_info, markdown_table, write_reports

FORMATS = {"JPEG q95": ("JPEG", {"quality": 95}), "PNG": ("PNG", {"compress_level": 6}), "WebP q90": ("WEBP", {"quality": 90})}


def image(photo: str, megapixels: float, seed: int = 0):
    from PIL import Image
    from skimage import data

    src = Image.fromarray(getattr(data, photo)()).convert("RGB")
    scale = (megapixels * 1e6 / (src.width * src.height)) ** 0.5
    big = np.asarray(src.resize((round(src.width * scale), round(src.height * scale)), Image.BICUBIC), dtype=np.int16)
    grain = np.random.default_rng(seed).normal(0, 3, big.shape).astype(np.int16)
    return Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8))


def run(photos: list[str], megapixels: list[float], log=print) -> list[dict]:
    import vitrt

    rows = []
    for photo in photos:
        for mp in megapixels:
            img = image(photo, mp)
            for name, (fmt, opts) in FORMATS.items():
                if fmt != "JPEG" and mp > 50:  # PNG/WebP of 89 MP take minutes to encode here; JPEG is what cameras write
                    continue
                buf = io.BytesIO()
                img.save(buf, format=fmt, **opts)
                blob = buf.getvalue()
                t0 = time.perf_counter()
                vitrt.preprocess(blob)
                ms = 1000 * (time.perf_counter() - t0)
                rows.append({"photo": photo, "megapixels": round(img.width * img.height / 1e6, 1), "format": name,
                             "bytes": len(blob), "preprocess_ms": ms})
                log(f"{photo} {img.width}x{img.height} {name}: {len(blob) / 1e6:.1f} MB, preprocess {ms:.0f} ms")
    return rows


def markdown(rows: list[dict], machine: dict) -> str:
    table = markdown_table(["photo", "MP", "format", "MB", "decode + crop ms"],
                           [[r["photo"], r["megapixels"], r["format"], f"{r['bytes'] / 1e6:.1f}", f"{r['preprocess_ms']:.0f}"]
                            for r in rows])
    return f"# Bytes of legitimate images\n\nCPU: {machine['cpu']}\n\n{table}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--megapixels", type=lambda s: [float(x) for x in s.split(",")], default=[12, 24, 48, 89],
                   help="resolutions in megapixels (default: 12,24,48,89)")
    p.add_argument("--photos", type=lambda s: s.split(","), default=["astronaut", "coffee"],
                   help="scikit-image photos (default: astronaut,coffee)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    args = p.parse_args(argv)
    rows = run(args.photos, args.megapixels)
    machine = machine_info()
    text = markdown(rows, machine)
    write_reports("image_bytes", {"machine": machine, "rows": rows}, text, folder=args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
