"""Images the build stage uses when nothing else is given: scikit-image's photos and synthetic ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Color photos shipped with scikit-image (natural content, several sizes and aspect ratios).
COLOR_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                "motorcycle_left.png", "ihc.png", "retina.jpg")
#: Grayscale photos (converted to RGB the way timm's loader does).
GRAY_PHOTOS = ("camera.png", "moon.png", "coins.png", "brick.png", "grass.png", "gravel.png",
               "cell.png", "clock_motion.png")


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def builtin_photos(gray: bool = True) -> list[Path]:
    """Paths of the photos scikit-image ships: the color ones, then (optionally) the grayscale ones."""
    names = COLOR_PHOTOS + (GRAY_PHOTOS if gray else ())
    root = skimage_data_dir()
    return [root / n for n in names if (root / n).is_file()]


def synthetic_batch(n: int, size: tuple[int, int] = (384, 384), seed: int = 0) -> np.ndarray:
    """``n`` deterministic uint8 [H, W, 3] images: uniform noise, smooth gradients and blocks."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out[i] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif kind == 1:
            phase = rng.uniform(0, 2 * np.pi, 3)
            freq = rng.uniform(0.005, 0.05, 3)
            for c in range(3):
                out[i, :, :, c] = (127.5 + 127.5 * np.sin(freq[c] * (xx + yy * (c + 1)) + phase[c])).astype(np.uint8)
        else:
            blocks = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
            out[i] = np.repeat(np.repeat(blocks, 32, 0), 32, 1)[:h, :w]
    return out

