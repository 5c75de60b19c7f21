"""Calibration images for INT8/FP8: read from CALIB_DIR through vitrt's own preprocessing.

The same code that serves requests (``vitrt.preprocess``) prepares the calibration batch, so the
quantization ranges are measured on exactly what the engine will see.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from vitrt.errors import BuildError, ImageError, InputError
from vitrt.metadata import sha256_file
from vitrt.preprocess import DEFAULT_DATA_CONFIG, preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
#: TensorRT's guidance for ViTs: at least 500 calibration images.
RECOMMENDED = 500
BUILTIN = "builtin"


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted, by suffix."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _select(paths: list[Path], limit: int | None) -> list[Path]:
    """At most ``limit`` paths, evenly spaced over the sorted list (deterministic, covers every class folder)."""
    if not limit or len(paths) <= limit:
        return paths
    idx = np.linspace(0, len(paths) - 1, limit).round().astype(int)
    return [paths[i] for i in idx]


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a build dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False)


def load_calibration(calib_dir: str | os.PathLike | None, data_config: dict = DEFAULT_DATA_CONFIG,
                     limit: int | None = 512, log: Callable[[str], None] = print,
                     warn_small: bool = True) -> tuple[np.ndarray, dict]:
    """uint8 [N, H, W, 3] calibration batch and its provenance (count, source, hash of the list).

    ``warn_small``: warn under 500 images (INT8/FP8 calibration; not FP16's range check)."""
    if calib_dir is None or str(calib_dir).strip() == "":
        raise BuildError("INT8 and FP8 need calibration images: pass CALIB_DIR=/path/to/images (a folder of "
                         f"JPEG/PNG files, {RECOMMENDED}+ recommended; CLI --calib-dir) or CALIB_DIR=builtin for "
                         "a small smoke-test set made from scikit-image's photos")
    if str(calib_dir) == BUILTIN:
        return _builtin(data_config, log if warn_small else None)
    folder = Path(calib_dir).expanduser()
    if not folder.is_dir():
        raise BuildError(f"CALIB_DIR {os.fspath(folder)!r} is not a folder; expected a folder of images or 'builtin'")
    found = list_images(folder)
    if not found:
        raise BuildError(f"CALIB_DIR {os.fspath(folder)!r} has no images (looked for {', '.join(IMAGE_SUFFIXES)}, "
                         "recursively)")
    paths = _select(found, limit)
    images, used, skipped = [], [], []
    for path in _progress(paths, len(paths), "preprocessing calibration images"):
        try:
            images.append(preprocess(path, data_config))
            used.append(path)
        except (ImageError, InputError) as exc:
            skipped.append(f"{path.name}: {exc}")
    if skipped:
        log(f"WARNING: skipped {len(skipped)} unreadable calibration image(s) of {len(paths)}, e.g. {skipped[0]}")
    if not images:
        raise BuildError(f"none of the {len(paths)} images in CALIB_DIR {os.fspath(folder)!r} could be read; "
                         "expected JPEG/PNG/... images")
    digest = hashlib.sha256()
    for p in used:
        digest.update(f"{p.relative_to(folder).as_posix()}\0{sha256_file(p)}\n".encode())
    # the folder's name, not its path: the metadata travels into production (the list's sha256 identifies it)
    prov = {"source": folder.resolve().name, "count": len(images), "found": len(found),
            "skipped": len(skipped), "list_sha256": digest.hexdigest()}
    if warn_small:
        _warn_small(len(images), log)
    return np.stack(images), prov


def _builtin(data_config: dict, log: Callable[[str], None] | None) -> tuple[np.ndarray, dict]:
    """scikit-image's 16 photos (8 color, 8 grayscale) and their mirror images: 32 images."""
    from .images import builtin_photos

    photos = builtin_photos(gray=True)
    crops = [preprocess(p, data_config) for p in photos]
    images = np.stack(crops + [c[:, ::-1] for c in crops])
    digest = hashlib.sha256()
    for p in photos:
        digest.update(f"{p.name}\0{sha256_file(p)}\n".encode())
    digest.update(b"+hflip")
    prov = {"source": BUILTIN, "count": len(images), "found": len(images), "skipped": 0,
            "list_sha256": digest.hexdigest(), "note": "scikit-image photos and their mirror images"}
    if log is not None:
        _warn_small(len(images), log)
    return images, prov


def _warn_small(n: int, log: Callable[[str], None]) -> None:
    if n < RECOMMENDED:
        log(f"WARNING: calibrating on {n} images; TensorRT recommends at least {RECOMMENDED} for ViTs. "
            "Ranges from a small set can clip real inputs: check the parity report.")
