"""Bad images get an ImageError / InputError that names what was wrong and what was expected."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vitrt.errors import ImageError, InputError, VitrtError
from vitrt.preprocess import preprocess


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    """A valid 1x1 PNG whose header claims w x h: Pillow must refuse it from the header alone."""
    data = bytearray(_png(1, 1))
    ihdr = data.index(b"IHDR")
    body = struct.pack(">II", w, h) + bytes(data[ihdr + 12:ihdr + 17])
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", w, h)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return bytes(data)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist.*expected a path to an image"):
        preprocess(tmp_path / "nope.jpg")


def test_empty_file_and_bytes(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="is empty"):
        preprocess(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="bytes are empty"):
        preprocess(b"")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello, I am text\n" * 10)
    with pytest.raises(ImageError, match="not an image Pillow can read; expected JPEG, PNG"):
        preprocess(tmp_path / "notes.jpg")
    with pytest.raises(ImageError, match="not an image"):
        preprocess(b"\x00\x01garbage" * 50)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, fmt):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        preprocess(path)


def test_corrupt_body(tmp_path):
    data = bytearray(_png(200, 100))
    idat = data.index(b"IDAT")
    data[idat + 8:idat + 30] = b"\xff" * 22  # break the compressed stream
    with pytest.raises(ImageError, match="corrupt or truncated"):
        preprocess(bytes(data))


def test_decompression_bomb_refused_unread(tmp_path):
    bomb = _bomb_png(30_000, 30_000)  # 900 M pixels claimed, 70 bytes on disk
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="decompression bomb"):
        preprocess(bomb)
    # just over vitrt's own limit (below Pillow's hard error): refused by vitrt before decoding
    path = tmp_path / "big.png"
    path.write_bytes(_bomb_png(10_000, 9_000))
    with pytest.raises(ImageError, match=r"10000x9000 = 90000000 pixels, refused as a possible decompression bomb"):
        preprocess(path)
    with pytest.raises(ImageError, match="refused as a possible decompression bomb"):
        preprocess(_png(100, 100), max_pixels=5_000)


def test_extreme_aspect_ratio_refused():
    arr = np.zeros((2, 60_000, 3), np.uint8)  # resize to 11,520,000 x 384 would need 4.4 G pixels
    with pytest.raises(ImageError, match="aspect ratio too extreme"):
        preprocess(arr)


@pytest.mark.parametrize("arr, match", [
    (np.zeros((50, 50, 3), np.float32), "dtype float32; expected uint8"),
    (np.zeros((50, 50, 3), np.int64), "dtype int64; expected uint8"),
    (np.zeros((50, 50), np.uint8), r"shape \(50, 50\); expected \(H, W, 3\)"),
    (np.zeros((50, 50, 4), np.uint8), r"shape \(50, 50, 4\); expected \(H, W, 3\)"),
    (np.zeros((50, 50, 1), np.uint8), r"shape \(50, 50, 1\)"),
    (np.zeros((0, 50, 3), np.uint8), "size 50x0; expected at least 1x1"),
])
def test_bad_arrays(arr, match):
    with pytest.raises(InputError if arr.size else VitrtError, match=match):
        preprocess(arr)


def test_wrong_type():
    with pytest.raises(InputError, match="type int; expected a path, bytes, a PIL image"):
        preprocess(42)


def test_pil_mode_that_cannot_become_rgb(monkeypatch):
    """timm's loader does ``convert("RGB")``: what Pillow converts, vitrt converts the same way (F here);
    what Pillow refuses (ValueError, e.g. mode 'La' in Pillow 13) is an ImageError that names the mode."""
    img = Image.new("F", (20, 20), 3.0)
    np.testing.assert_array_equal(preprocess(img), preprocess(img.convert("RGB")))
    la = Image.new("LA", (20, 20))
    convert = Image.Image.convert

    def refuse(self, mode=None, *args, **kwargs):
        if self is la:
            raise ValueError("conversion from LA to RGB not supported")
        return convert(self, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", refuse)
    with pytest.raises(ImageError, match=r"has mode 'LA' that cannot be converted to RGB \(conversion from LA"):
        preprocess(la)
