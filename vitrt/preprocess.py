"""timm-exact eval preprocessing with Pillow and numpy only.

timm's eval transform for this model is ``Resize(384, bicubic)`` (shorter side to 384, the longer
side scaled and truncated with ``int()``), ``CenterCrop(384)`` (offsets rounded with Python's
``round``), ``ToTensor``, ``Normalize``. Pillow does the resize and crop in both pipelines, so doing
the same Pillow calls with the same integer arithmetic gives the same uint8 crop, pixel for pixel.
Normalization is not done here: it runs inside the graph (see DESIGN.md, "Artifact contract").

A checkpoint whose processor resizes both sides (Hugging Face's ViTImageProcessor: no crop, bilinear)
has timm's ``crop_mode="squash"``: both sides resized to ``input_size / crop_pct``, then the center crop
(none at crop_pct 1): the same Pillow call as ``ViTImageProcessorPil``, so the same pixels.

Images are decoded the way timm's dataset loader does it: ``Image.open(f).convert("RGB")``, no EXIF
rotation, first frame of an animation.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError, InputError

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

#: Pillow's own decompression-bomb threshold (about 9459 x 9459); larger images are refused unread.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

DEFAULT_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 384, 384),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
    "crop_mode": "center",
}


#: timm's eval crop modes vitrt reproduces: "center" (shorter side resized, center crop) and "squash"
#: (both sides resized, then the center crop)
CROP_MODES = ("center", "squash")


def check_data_config(dc: Any, where: str = "data config") -> dict:
    """The parts of a timm data config preprocessing uses, each checked; InputError names the bad one."""
    def bad(key: str, expected: str) -> InputError:
        value = dc.get(key, "(missing)") if isinstance(dc, dict) else dc
        return InputError(f"{where} {key}={value!r}; expected {expected}")

    if not isinstance(dc, dict):
        raise InputError(f"{where} is a {type(dc).__name__}; expected a dict like timm's resolve_data_config()")
    size = dc.get("input_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size) and size[0] == 3):
        raise bad("input_size", "[3, H, W] with positive integers")
    if dc.get("interpolation", "bicubic") not in _INTERPOLATION:
        raise bad("interpolation", f"one of {sorted(_INTERPOLATION)}")
    crop_pct = dc.get("crop_pct", 1.0)
    if crop_pct is not None and (isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float))
                                 or not 0 < crop_pct <= 1):
        raise bad("crop_pct", "a number in (0, 1]")
    if dc.get("crop_mode", "center") not in CROP_MODES:
        raise bad("crop_mode", " or ".join(repr(m) for m in CROP_MODES))
    for key in ("mean", "std"):
        v = dc.get(key)
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                and (key == "mean" or all(x > 0 for x in v))):
            raise bad(key, "3 finite numbers" + (" > 0" if key == "std" else ""))
    return dc


def plan_resize_crop(width: int, height: int, data_config: dict) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The (resized size, crop box) timm's eval transform uses for a ``width`` x ``height`` image.

    Mirrors ``timm.data.transforms_imagenet_eval`` (center and squash crop modes) and torchvision's
    ``_compute_resized_output_size`` / ``center_crop`` integer arithmetic.
    """
    check_data_config(data_config)
    crop_h, crop_w = (int(v) for v in data_config["input_size"][-2:])
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    mode = data_config.get("crop_mode", "center")
    scale = (math.floor(crop_h / crop_pct), math.floor(crop_w / crop_pct))
    if mode == "squash":
        new_w, new_h = scale[1], scale[0]
    else:
        if scale[0] != scale[1]:
            raise InputError(f"data config crop_mode='center' with scale size {scale} is not supported; "
                             "expected a square input_size (or crop_mode='squash')")
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = scale[0], int(scale[0] * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    return (new_w, new_h), (left, top, left + crop_w, top + crop_h)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"image file {_short(os.fspath(source))!r}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"image bytes ({len(source)} bytes)"
    return "image"


#: Pillow's limit is a process-wide setting; vitrt raises it (under this lock) only while it opens an
#: image for a caller who allowed more pixels, after checking the size itself.
_PIL_LIMIT_LOCK = threading.Lock()


def _decode(fp: Any, what: str, max_pixels: int) -> Image.Image:
    """Open, check the size from the header, and decode. Any failure of the decoder is an ImageError:
    Pillow and its plugins raise OSError, ValueError, SyntaxError, RuntimeError, struct.error, EOFError
    and others for bad data, so the decoder's exceptions are caught by where they come from."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # vitrt checks the size itself
            if max_pixels > (Image.MAX_IMAGE_PIXELS or max_pixels):
                with _PIL_LIMIT_LOCK:
                    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                    try:
                        img = Image.open(fp)
                    finally:
                        Image.MAX_IMAGE_PIXELS = old
            else:
                img = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not an image Pillow can read; expected JPEG, PNG, WebP, BMP, TIFF, ...") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what} refused as a decompression bomb ({exc}); expected at most {max_pixels} pixels "
                         "(max_pixels)") from None
    except MemoryError:
        raise
    except Exception as exc:  # the decoder failed on this data: see the docstring
        raise ImageError(f"{what} could not be read ({type(exc).__name__}: {exc}); expected a valid image file") from None
    _check_pixels(img.size, max_pixels, what)
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as exc:  # truncated or corrupt data, whatever the plugin raises for it
        raise ImageError(f"{what} is corrupt or truncated ({type(exc).__name__}: {exc}); expected a complete "
                         "encoded image") from None
    return img


def _open(source: ImageLike, max_pixels: int) -> Image.Image:
    """Open and decode ``source`` as timm's loader does, refusing bombs before decoding. A file is
    closed before this returns or raises (Pillow keeps no handle after ``load()``)."""
    what = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            is_file = path.is_file()
            size = path.stat().st_size if is_file else None
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte: not a path at all
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ImageError(f"{what} is not a usable path ({reason}); expected a path to an image file "
                             "(pass encoded image data as bytes, not str)") from None
        if not is_file:
            raise ImageError(f"{what} does not exist (or is not a file); expected a path to an image")
        if size == 0:
            raise ImageError(f"{what} is empty (0 bytes); expected an encoded image (JPEG, PNG, ...)")
        try:
            with open(path, "rb") as f:
                return _decode(f, what, max_pixels)
        except OSError as exc:  # unreadable: permissions, a folder, I/O errors
            raise ImageError(f"{what} could not be opened ({exc.strerror or exc}); expected a readable "
                             "image file") from None
    if len(source) == 0:
        raise ImageError("image bytes are empty; expected an encoded image (JPEG, PNG, ...)")
    return _decode(io.BytesIO(bytes(source)), what, max_pixels)


def _check_pixels(size: tuple[int, int], max_pixels: int, what: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{what} has size {w}x{h}; expected at least 1x1 pixels")
    if w * h > max_pixels:
        raise ImageError(
            f"{what} is {w}x{h} = {w * h} pixels, refused as a possible decompression bomb; expected at "
            f"most {max_pixels} pixels (limit {max_pixels}; raise max_pixels to allow it)"
        )


def check_max_pixels(max_pixels: Any) -> int:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"max_pixels={max_pixels!r}; expected a positive integer (default {DEFAULT_MAX_PIXELS})")
    return int(max_pixels)


def to_pil(source: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any accepted image type -> an RGB PIL image, converted the way timm's loader converts."""
    max_pixels = check_max_pixels(max_pixels)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise InputError(f"image array has dtype {source.dtype}; expected uint8 (HxWx3 RGB)")
        if source.ndim != 3 or source.shape[2] != 3:
            raise InputError(f"image array has shape {source.shape}; expected (H, W, 3) RGB uint8")
        _check_pixels((source.shape[1], source.shape[0]), max_pixels, "image array")
        return Image.fromarray(np.ascontiguousarray(source), mode="RGB")
    if isinstance(source, Image.Image):
        img = source
        _check_pixels(img.size, max_pixels, "PIL image")
        try:
            img.load()  # a closed image, or a lazy one over a truncated file, fails here
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageError(f"PIL image could not be loaded ({type(exc).__name__}: {exc}); expected an open, "
                             "complete image") from None
    elif isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        img = _open(source, max_pixels)
    else:
        raise InputError(
            f"got an image of type {type(source).__name__}; expected a path, bytes, a PIL image "
            "or a uint8 HxWx3 numpy array"
        )
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageError(f"{_describe(source)} has mode {img.mode!r} that cannot be converted to RGB ({exc})") from None
    return img


def resize_center_crop(img: Image.Image, data_config: dict = DEFAULT_DATA_CONFIG,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """timm's eval Resize + CenterCrop on an RGB PIL image -> uint8 array [H, W, 3]."""
    (new_w, new_h), box = plan_resize_crop(img.width, img.height, data_config)
    if new_w * new_h > max_pixels:
        raise ImageError(
            f"image {img.width}x{img.height} has an aspect ratio too extreme: its resize to "
            f"{new_w}x{new_h} would need {new_w * new_h} pixels; expected at most {max_pixels} (max_pixels)"
        )
    interp = data_config.get("interpolation", "bicubic")
    if interp not in _INTERPOLATION:
        raise InputError(f"interpolation {interp!r} is not supported; expected one of {sorted(_INTERPOLATION)}")
    resample = _INTERPOLATION[interp]
    left, top, right, bottom = box
    squash = data_config.get("crop_mode", "center") == "squash"
    if new_w > right - left and new_h != img.height and not squash:
        # Landscape: Pillow resizes in two passes, horizontal then vertical, with a uint8 image in
        # between, and each column of the vertical pass is independent of the others. So running the
        # horizontal pass alone, cropping the columns we keep, then the vertical pass on that strip
        # gives the same pixels as resize-then-crop, without the vertical pass on discarded columns.
        # (Pillow's `box=` argument cannot do this exactly: it takes float32 coordinates.) Only for the
        # center mode's aspect-preserving resize: for squash's, Pillow 13 may run the vertical pass first
        # (measured: 300x500 -> 438x438), and the strip would then differ.
        strip = img.resize((new_w, img.height), resample).crop((left, 0, right, img.height))
        return np.asarray(strip.resize((right - left, new_h), resample).crop((0, top, right - left, bottom)),
                          dtype=np.uint8)
    if img.size != (new_w, new_h):
        img = img.resize((new_w, new_h), resample)
    return np.asarray(img.crop(box), dtype=np.uint8)


def is_single(images: Any) -> bool:
    """One image: a path, bytes, a PIL image, an HxWx3 array (anything :func:`to_pil` takes). Many: a
    list, a tuple, an NxHxWx3 array, or any other iterable such as a generator."""
    if isinstance(images, np.ndarray):
        return images.ndim != 4
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, dict)) or hasattr(images, "getpixel"):
        return True
    return not hasattr(images, "__iter__")


def preprocess(source: ImageLike, data_config: dict = DEFAULT_DATA_CONFIG,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` and return the uint8 [384, 384, 3] crop timm's eval transform makes."""
    return resize_center_crop(to_pil(source, max_pixels), data_config, max_pixels)


def normalize_nchw(batch: np.ndarray, data_config: dict = DEFAULT_DATA_CONFIG) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], ``(x / 255 - mean) / std`` as timm's ToTensor + Normalize."""
    x = batch.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(data_config["mean"], dtype=np.float32)
    std = np.asarray(data_config["std"], dtype=np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))
