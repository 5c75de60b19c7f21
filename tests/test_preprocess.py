"""Rung 1 of the ladder: vitrt's uint8 crop == timm's eval pipeline before ToTensor, pixel for pixel."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vitrt.errors import ImageError
from vitrt.preprocess import DEFAULT_DATA_CONFIG, normalize_nchw, preprocess


@pytest.fixture(scope="module")
def timm_crop(small_model):
    """timm's own Resize + CenterCrop for this model, applied to an image opened like timm's loader."""
    import timm.data
    from torchvision import transforms as T

    cfg = timm.data.resolve_model_data_config(small_model[0])
    assert cfg == {**DEFAULT_DATA_CONFIG, "input_size": (3, 384, 384)}, "vitrt's default config drifted from timm's"
    tf = timm.data.create_transform(**cfg, is_training=False)
    resize, crop = tf.transforms[0], tf.transforms[1]
    assert isinstance(resize, T.Resize) and isinstance(crop, T.CenterCrop)

    def run(source) -> np.ndarray:
        img = source if isinstance(source, Image.Image) else Image.open(source)
        return np.asarray(crop(resize(img.convert("RGB"))))

    return run


def _pattern(w: int, h: int, seed: int) -> np.ndarray:
    """Noise over a gradient: every pixel differs, so any arithmetic difference in resampling shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
    return ((base + rng.integers(0, 64, (h, w, 3))) % 256).astype(np.uint8)


def test_skimage_files_match_timm(timm_crop, skimage_dir):
    files = sorted(p for p in skimage_dir.iterdir() if p.suffix in (".png", ".jpg", ".gif", ".tif"))
    modes, unreadable = set(), []
    for path in files:
        try:
            modes.add(Image.open(path).mode)
        except Exception:  # e.g. multipage_rgb.tif: Pillow cannot read it, so neither can timm
            unreadable.append(path)
            with pytest.raises(ImageError, match="not an image Pillow can read"):
                preprocess(path)
            continue
        got = preprocess(path)
        assert got.dtype == np.uint8 and got.shape == (384, 384, 3)
        np.testing.assert_array_equal(got, timm_crop(path), err_msg=path.name)
    assert {"RGB", "L", "RGBA", "P"} <= modes  # the shipped files cover these modes
    assert len(unreadable) <= 2


SIZES = [(1, 1), (2, 3), (17, 5), (5, 17), (383, 384), (384, 384), (385, 385), (384, 1000), (1000, 7),
         (7, 1000), (640, 480), (480, 640), (451, 300), (300, 451), (999, 1001), (4032, 3024), (2000, 4500),
         (384, 387), (387, 384), (384, 391), (391, 384)]  # 387, 391: odd crop margins where round() != floor()


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_generated_sizes_match_timm(timm_crop, size, tmp_path):
    arr = _pattern(*size, seed=size[0] * 31 + size[1])
    img = Image.fromarray(arr)
    expected = timm_crop(img)
    np.testing.assert_array_equal(preprocess(arr), expected)       # numpy input
    np.testing.assert_array_equal(preprocess(img), expected)       # PIL input
    path = tmp_path / "img.png"
    img.save(path)
    np.testing.assert_array_equal(preprocess(path), expected)      # file input
    np.testing.assert_array_equal(preprocess(path.read_bytes()), expected)  # bytes input


def _mode_image(mode: str, w: int = 500, h: int = 320) -> tuple[Image.Image, str]:
    rgb = Image.fromarray(_pattern(w, h, seed=7))
    if mode == "L":
        return rgb.convert("L"), "PNG"
    if mode == "LA":
        img = rgb.convert("L")
        img.putalpha(Image.fromarray(_pattern(w, h, 8)[..., 0]))
        return img, "PNG"
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=200), "PNG"
    if mode == "RGBA":
        img = rgb.copy()
        img.putalpha(Image.fromarray(_pattern(w, h, 9)[..., 1]))
        return img, "PNG"
    if mode == "CMYK":
        return rgb.convert("CMYK"), "JPEG"
    if mode == "I;16":
        a = (_pattern(w, h, 10)[..., 0].astype(np.uint16) * 257 // 3)  # spans 0..21845: some clip at 255
        return Image.fromarray(a), "PNG"
    if mode == "1":
        return rgb.convert("1"), "PNG"
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_modes_match_timm(timm_crop, mode, tmp_path):
    img, fmt = _mode_image(mode)
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, format=fmt)
    opened = Image.open(path)
    assert opened.mode == mode, f"saved {mode} reopened as {opened.mode}"
    np.testing.assert_array_equal(preprocess(path), timm_crop(path))
    np.testing.assert_array_equal(preprocess(Image.open(path)), timm_crop(path))


def test_jpeg_bytes_and_animated_gif(timm_crop, skimage_dir, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_pattern(700, 500, 3)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    np.testing.assert_array_equal(preprocess(data), timm_crop(io.BytesIO(data)))
    gif = skimage_dir / "no_time_for_that_tiny.gif"  # animated: timm and vitrt both use the first frame
    np.testing.assert_array_equal(preprocess(gif), timm_crop(gif))


def test_normalize_matches_timm_to_tensor_normalize(timm_crop, skimage_dir):
    import timm.data
    import torch

    tf = timm.data.create_transform(**DEFAULT_DATA_CONFIG, is_training=False)
    path = skimage_dir / "chelsea.png"
    ref = tf(Image.open(path).convert("RGB")).numpy()
    got = normalize_nchw(preprocess(path)[None])[0]
    # same float32 ops in the same order: identical up to one rounding step of the division
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert torch.is_tensor(tf(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("crop_pct, interpolation", [(1.0, "bilinear"), (0.875, "bicubic"), (0.9, "bilinear")])
@pytest.mark.parametrize("size", [(640, 427), (300, 500), (384, 384), (97, 1033)])
def test_squash_mode_matches_timm(crop_pct, interpolation, size):
    """timm's crop_mode='squash' (both sides resized to input_size / crop_pct, then the center crop): a
    Hugging Face ViT processor's layout (export/checkpoints.py), pixel for pixel against timm's transform."""
    import timm.data

    cfg = {**DEFAULT_DATA_CONFIG, "crop_mode": "squash", "crop_pct": crop_pct, "interpolation": interpolation}
    tf = timm.data.create_transform(input_size=(3, 384, 384), crop_mode="squash", crop_pct=crop_pct,
                                    interpolation=interpolation, is_training=False)
    img = Image.fromarray(_pattern(*size, seed=size[0]))
    want = np.asarray(tf.transforms[1](tf.transforms[0](img)))
    assert np.array_equal(preprocess(img, cfg), want)


def test_an_unknown_crop_mode_is_refused():
    from vitrt.errors import InputError

    with pytest.raises(InputError, match="crop_mode='border'; expected 'center' or 'squash'"):
        preprocess(Image.new("RGB", (50, 50)), {**DEFAULT_DATA_CONFIG, "crop_mode": "border"})
