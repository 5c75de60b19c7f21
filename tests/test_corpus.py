"""A corpus of bad inputs, artifacts, arguments and command lines: each gets a VitrtError subclass whose
message says what was wrong and what was expected, and the CLI prints no traceback.

"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitrt
from vitrt.errors import ArtifactError, BackendError, ImageError, InputError, MetadataError, VitrtError

ROOT = Path(__file__).resolve().parents[1]


def _expect(fn, kind=VitrtError):
    """Run ``fn``; it must raise ``kind`` (a VitrtError) with a message that says what was expected."""
    with pytest.raises(kind) as info:
        fn()
    msg = str(info.value)
    assert isinstance(info.value, VitrtError) and "expected" in msg, msg
    assert len(msg) < 2000, msg  # a message, not a dump
    return msg


def _png(w=8, h=8, mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG", **save)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _with_chunk(png: bytes, chunk: bytes) -> bytes:
    return png[:33] + chunk + png[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


def _jpeg(w=64, h=48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# --- 1. image inputs --------------------------------------------------------------------------------
def _image_cases(tmp: Path) -> dict[str, tuple[object, type]]:
    (tmp / "empty.jpg").write_bytes(b"")
    (tmp / "text.png").write_text("not an image\n" * 20)
    (tmp / "folder.jpg").mkdir()
    (tmp / "trunc.jpg").write_bytes(_jpeg()[:200])
    (tmp / "trunc.png").write_bytes(_png(64, 64)[:60])
    big_text = zlib.compress(b"x" * (2 << 20))
    lazy_path = tmp / "lazy.jpg"
    lazy_path.write_bytes(_jpeg(256, 256)[:900])
    closed = Image.new("RGB", (8, 8))
    closed.close()
    cases = {
        "str of 300 chars": ("x" * 300, ImageError),
        "str of 5000 chars": ("a" * 5000 + ".jpg", ImageError),
        "str with a NUL": ("a\0b.jpg", ImageError),
        "base64 text": ("iVBORw0KGgo" * 40, ImageError),
        "missing file": (tmp / "missing.jpg", ImageError),
        "a folder": (tmp / "folder.jpg", ImageError),
        "empty file": (tmp / "empty.jpg", ImageError),
        "text file": (tmp / "text.png", ImageError),
        "truncated jpeg file": (tmp / "trunc.jpg", ImageError),
        "truncated png file": (tmp / "trunc.png", ImageError),
        "empty bytes": (b"", ImageError),
        "random bytes": (np.random.default_rng(1).bytes(500), ImageError),
        "png zTXt over 1 MB": (_with_chunk(_png(), _chunk(b"zTXt", b"k\0\0" + big_text)), ImageError),
        "png iCCP over 1 MB": (_with_chunk(_png(), _chunk(b"iCCP", b"p\0\0" + big_text)), ImageError),
        "png bad crc": (_png()[:30] + b"\0\0\0\0" + _png()[34:], ImageError),
        "ppm bad header": (b"P6\n4x 4\n255\n" + bytes(48), ImageError),
        "ppm short data": (b"P6\n4 4\n255\n" + bytes(10), ImageError),
        "ppm maxval 0": (b"P6\n4 4\n0\n" + bytes(48), ImageError),
        "gif header only": (b"GIF89a\x01\x00\x01\x00\x00\x00\x00", ImageError),
        "bmp header only": (b"BM" + bytes(20), ImageError),
        "tiff header only": (b"II*\x00\x08\x00\x00\x00" + bytes(4), ImageError),
        "webp header only": (b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(8), ImageError),
        "avif garbage": (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), ImageError),
        "jpeg soi only": (b"\xff\xd8\xff", ImageError),
        "bomb png header": (_bomb_png(100_000, 100_000), ImageError),
        "closed PIL image": (closed, ImageError),
        "lazy PIL image of a truncated file": (Image.open(lazy_path), ImageError),
        "0-d array": (np.array(3, np.uint8), InputError),
        "float array": (np.zeros((8, 8, 3), np.float32), InputError),
        "int64 array": (np.zeros((8, 8, 3), np.int64), InputError),
        "bool array": (np.zeros((8, 8, 3), bool), InputError),
        "gray array": (np.zeros((8, 8), np.uint8), InputError),
        "RGBA array": (np.zeros((8, 8, 4), np.uint8), InputError),
        "CHW array": (np.zeros((3, 8, 8), np.uint8)[:, :, :2], InputError),
        "object array": (np.array([None, 1], dtype=object), InputError),
        "empty array": (np.zeros((0, 8, 3), np.uint8), ImageError),
        "None": (None, InputError),
        "int": (42, InputError),
        "dict": ({"image": 1}, InputError),
        "set": ({1, 2}, InputError),
    }
    return cases


def _bomb_png(w: int, h: int) -> bytes:
    data = bytearray(_png(1, 1))
    body = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return bytes(data)


def test_image_input_corpus(tmp_path):
    cases = _image_cases(tmp_path)
    for name, (source, kind) in cases.items():
        msg = _expect(lambda: vitrt.preprocess(source), kind)
        assert "Traceback" not in msg, name


def test_modes_convert_like_timm(tmp_path):
    """Every mode timm's loader converts is converted, not refused (L, LA, P, RGBA, CMYK, I;16, I, F, 1, ...)."""
    for mode in ("L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I;16", "I", "F", "1"):
        crop = vitrt.preprocess(Image.new(mode, (40, 30)))
        assert crop.shape == (384, 384, 3) and crop.dtype == np.uint8, mode


def test_tiny_and_extreme_images():
    assert vitrt.preprocess(Image.new("RGB", (1, 1))).shape == (384, 384, 3)
    _expect(lambda: vitrt.preprocess(Image.new("RGB", (100_000, 1))), ImageError)  # resize would be a bomb
    _expect(lambda: vitrt.preprocess(np.zeros((1, 0, 3), np.uint8)), ImageError)


def test_max_pixels_above_pillows_limit_takes_effect():
    """Pillow refuses > 2 x 89.5 Mpx on its own; vitrt's max_pixels decides instead (header check only here)."""
    bomb = _bomb_png(20_000, 10_000)  # 200 Mpx claimed by a 1x1 PNG
    msg = _expect(lambda: vitrt.preprocess(bomb), ImageError)
    assert "expected at most 89478485 pixels" in msg
    msg = _expect(lambda: vitrt.preprocess(bomb, max_pixels=300_000_000), ImageError)
    assert "decompression bomb" not in msg and "corrupt or truncated" in msg  # past the size check: bad data


def test_mutated_files_never_escape_vitrt_errors():
    """Byte flips, truncations and insertions in a JPEG and a PNG: decoded, or an ImageError."""
    rng = np.random.default_rng(12345)
    seeds = [_jpeg(48, 40), _png(40, 32, optimize=True), _with_chunk(_png(16, 16), _chunk(b"tEXt", b"k\0v"))]
    outcomes = {"decoded": 0, "refused": 0}
    for i in range(600):
        data = bytearray(seeds[i % len(seeds)])
        kind = i % 3
        if kind == 0:
            for _ in range(rng.integers(1, 8)):
                data[rng.integers(0, len(data))] = rng.integers(0, 256)
        elif kind == 1:
            data = data[: rng.integers(1, len(data))]
        else:
            at = rng.integers(0, len(data))
            data[at:at] = rng.bytes(int(rng.integers(1, 64)))
        try:
            vitrt.preprocess(bytes(data))
            outcomes["decoded"] += 1
        except VitrtError as exc:
            assert "expected" in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["decoded"] > 0  # both outcomes happen: the mutations bite


def test_failed_decodes_close_their_files(tmp_path):
    """A failed decode does not keep its file open while the exception lives (ulimit -n in the issue)."""
    import os

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(_jpeg()[:300])
    fd_dir = Path(f"/proc/{os.getpid()}/fd")
    before = len(list(fd_dir.iterdir()))
    kept = []
    for _ in range(50):
        try:
            vitrt.preprocess(bad)
        except ImageError as exc:
            kept.append(exc)
    assert len(kept) == 50 and len(list(fd_dir.iterdir())) <= before + 1


# --- 2. artifacts and metadata --------------------------------------------------------------------------
def _with_meta(src: Path, out: Path, mutate) -> Path:
    import onnx

    from export.onnx_export import set_metadata

    model = onnx.load(src)
    meta = vitrt.metadata.Metadata.from_onnx(src).data
    meta = json.loads(json.dumps(meta))
    mutate(meta)
    set_metadata(model, meta)
    onnx.save(model, out)
    return out


def _set(path: str, value):
    def mutate(meta):
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return mutate


META_CASES = {
    "num_classes 10": ("model.num_classes", 10),
    "num_classes 0": ("model.num_classes", 0),
    "num_features str": ("model.num_features", "64"),
    "batch.max 0": ("batch.max", 0),
    "batch.max -1": ("batch.max", -1),
    "batch.max abc": ("batch.max", "abc"),
    "batch.min > max": ("batch.min", 99),
    "batch missing": ("batch", KeyError),
    "crop_pct x": ("data_config.crop_pct", "x"),
    "crop_pct 0": ("data_config.crop_pct", 0),
    "interpolation": ("data_config.interpolation", "magic"),
    "mean short": ("data_config.mean", [0.5]),
    "std zero": ("data_config.std", [0.5, 0, 0.5]),
    "input_size 224": ("data_config.input_size", [3, 224, 224]),
    "input shape": ("input.shape", ["N", 224, 224, 3]),
    "input dtype": ("input.dtype", "float16"),
    "input layout": ("input.layout", "NCHW"),
    "input name": ("input.name", "pixels"),
    "input missing": ("input", KeyError),
    "precision fp16 on fp32": ("precision", "fp16"),
    "precision fp8 on fp32": ("precision", "fp8"),
    "precision int4": ("precision", "int4"),
    "logits missing": ("outputs.logits", KeyError),
    "logits width": ("outputs.logits.shape", ["N", 3]),
    "embedding dtype": ("outputs.embedding.dtype", "float16"),
    "extra output": ("outputs.tokens", {"dtype": "float32", "shape": ["N", 577, 64]}),
    "format 2": ("format", 2),
    "weights str": ("weights", "random"),
    "labels int": ("labels", 5),
    "model str": ("model", "vit"),
}


def test_metadata_corpus(tmp_path, small_onnx):
    for i, (name, (path, value)) in enumerate(META_CASES.items()):
        art = _with_meta(small_onnx, tmp_path / f"m{i}.onnx", _set(path, value))
        msg = _expect(lambda: vitrt.Engine(art), ArtifactError)
        assert "make engine" in msg, (name, msg)


def test_a_3_class_graph_with_1000_class_metadata(tmp_path, small_model):
    """The graph is the truth: its logits width decides, and a contradicting metadata is refused."""
    from conftest import MODEL, SMALL_KWARGS
    from export.onnx_export import export_onnx
    from export.weights import load_model

    model, prov = load_model(MODEL, "random", seed=0, model_kwargs={**SMALL_KWARGS, "num_classes": 3})
    art = tmp_path / "three.onnx"
    export_onnx(model, art, model_name=MODEL, provenance=prov, verify=False, log=lambda m: None)
    assert vitrt.Engine(art).predict(np.zeros((20, 20, 3), np.uint8), topk=3)  # consistent: works
    lying = _with_meta(art, tmp_path / "lying.onnx", lambda m: (m["model"].update(num_classes=1000),
                                                               m["outputs"]["logits"].update(shape=["N", 1000]),
                                                               m.update(labels="imagenet-1k")))
    import importlib.util

    for backend in ("onnxruntime", "openvino")[: 1 + bool(importlib.util.find_spec("openvino"))]:  # both runtimes check
        msg = _expect(lambda: vitrt.Engine(lying, backend=backend), ArtifactError)
        assert "the graph's I/O" in msg and "1000" in msg, backend


def test_broken_onnx_files(tmp_path, small_onnx):
    data = small_onnx.read_bytes()
    cases = {
        "empty": b"",
        "one byte": b"\x08",
        "random": np.random.default_rng(2).bytes(4096),
        "text": b"hello world\n" * 100,
        "half": data[: len(data) // 2],
        "all but the metadata": data[: data.rfind(b"vitrt") - 8],
        "first 100 bytes": data[:100],
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.onnx"
        p.write_bytes(blob)
        msg = _expect(lambda: vitrt.Engine(p), ArtifactError)
        if name == "empty":
            assert "is empty (0 bytes)" in msg
        if name in ("half", "first 100 bytes"):
            assert "truncated" in msg or "ends in the middle" in msg, msg
    bad_utf8 = tmp_path / "latin1.onnx"
    raw = data.replace(b'"random"', b'"r\xe9ndom"', 1)
    bad_utf8.write_bytes(raw)
    msg = _expect(lambda: vitrt.Engine(bad_utf8), ArtifactError)
    assert "not UTF-8" in msg


def test_plan_sidecar_corpus(tmp_path, small_onnx):
    """Sidecar problems are refused before any GPU or TensorRT is touched."""
    from vitrt.metadata import sha256_file

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan bytes")
    base = vitrt.metadata.Metadata.from_onnx(small_onnx).data
    base["plan"] = {"sha256": sha256_file(plan), "tensorrt": "10.14.1.48", "compute_capability": "9.0"}
    side = tmp_path / "m.plan.json"
    cases = {
        "not json": b"{not json",
        "not utf-8": json.dumps(base).replace("random", "r\udce9ndom").encode("utf-8", "surrogateescape"),
        "a list": b"[1, 2]",
        "sha256 int": json.dumps({**base, "plan": {**base["plan"], "sha256": 5}}).encode(),
        "sha256 short": json.dumps({**base, "plan": {**base["plan"], "sha256": "abc"}}).encode(),
        "tensorrt missing": json.dumps({**base, "plan": {"sha256": base["plan"]["sha256"]}}).encode(),
        "plan a string": json.dumps({**base, "plan": "yes"}).encode(),
        "batch opt > max": json.dumps({**base, "batch": {"min": 1, "opt": 64, "max": 32}}).encode(),
    }
    for name, blob in cases.items():
        side.write_bytes(blob)
        _expect(lambda: vitrt.Engine(plan), MetadataError)
    side.unlink()
    _expect(lambda: vitrt.Engine(plan), MetadataError)


def test_engine_arguments(small_onnx, tmp_path):
    from vitrt.cuda import gpu_count

    wrong_suffix = tmp_path / "small.onnx.json"  # a file that exists, with a suffix that is not an artifact's
    wrong_suffix.write_bytes(small_onnx.read_bytes())
    assert "has suffix '.json'; expected .onnx or .plan" in _expect(lambda: vitrt.Engine(wrong_suffix), ArtifactError)
    cases = [
        (lambda: vitrt.Engine(None), InputError),
        (lambda: vitrt.Engine(3), InputError),
        (lambda: vitrt.Engine("a" * 5000 + ".onnx"), ArtifactError),
        (lambda: vitrt.Engine("a\0.onnx"), ArtifactError),
        (lambda: vitrt.Engine(tmp_path), ArtifactError),
        (lambda: vitrt.Engine(tmp_path / "x.onnx"), ArtifactError),
        (lambda: vitrt.Engine(wrong_suffix), ArtifactError),
        (lambda: vitrt.Engine(small_onnx, threads="abc"), InputError),
        (lambda: vitrt.Engine(small_onnx, threads=0), InputError),
        (lambda: vitrt.Engine(small_onnx, threads=True), InputError),
        (lambda: vitrt.Engine(small_onnx, max_pixels="big"), InputError),
        (lambda: vitrt.Engine(small_onnx, max_pixels=0), InputError),
        (lambda: vitrt.Engine(small_onnx, device=-1), InputError),
        (lambda: vitrt.Engine(small_onnx, cuda_graphs="yes"), InputError),
        (lambda: vitrt.Engine(small_onnx, providers=["Nope"]), BackendError),
        (lambda: vitrt.Engine(small_onnx, providers=[3]), InputError),
    ]
    if gpu_count() == 0:  # on a GPU host the CUDA provider is a fine choice (onnxruntime-gpu is in the build extra)
        cases.append((lambda: vitrt.Engine(small_onnx, providers=["CUDAExecutionProvider"]), BackendError))
    for fn, kind in cases:
        _expect(fn, kind)
    with vitrt.Engine(small_onnx, providers="CPUExecutionProvider") as e:  # one name is one provider
        assert e.backend.providers == ["CPUExecutionProvider"]
        for bad in (0, -1, 1001, 2.5, "5", True, None):
            _expect(lambda: e.predict(np.zeros((8, 8, 3), np.uint8), topk=bad), InputError)
        for bad in ([], np.zeros((2, 384, 384, 3), np.float32), np.zeros((384, 384, 3), np.uint8),
                    np.zeros((0, 384, 384, 3), np.uint8), [1, 2], "x" * 300):
            _expect(lambda: e.infer(bad) if isinstance(bad, np.ndarray) else e.predict(bad), VitrtError)
    e.close()
    _expect(lambda: e.predict(np.zeros((8, 8, 3), np.uint8)), BackendError)


# --- 3. the command line ------------------------------------------------------------------------------
def _cli(*args: str, shell: str | None = None) -> subprocess.CompletedProcess:
    cmd = shell if shell is not None else [sys.executable, "-m", "vitrt", *args]
    return subprocess.run(cmd, capture_output=True, text=True, shell=shell is not None, cwd=ROOT, timeout=120)


def test_cli_corpus(tmp_path, small_onnx, photos):
    (tmp_path / "notes.jpg").write_text("text")
    latin = tmp_path / "latin1.onnx"
    latin.write_bytes(small_onnx.read_bytes().replace(b'"random"', b'"r\xe9ndom"', 1))
    (tmp_path / "x.plan").write_bytes(b"p")
    (tmp_path / "x.plan.json").write_bytes(b"\xff\xfe")
    runs = [
        ("info", str(photos[0])),
        ("info", str(latin)),
        ("info", str(tmp_path / "missing.onnx")),
        ("info", str(tmp_path / "x.plan")),
        ("info", "a" * 5000),
        ("predict", str(tmp_path / "notes.jpg"), "--engine", str(small_onnx)),
        ("predict", str(photos[0]), "--engine", str(latin)),
        ("predict", str(photos[0]), "--engine", str(small_onnx), "--providers", "Nope"),
        ("predict", str(photos[0]), "--engine", str(small_onnx), "--providers", "Nope", "--json"),
        ("predict", str(photos[0]), "--engine", str(small_onnx), "--topk", "0"),
        ("predict", "x" * 300, "--engine", str(small_onnx)),
        ("predict", str(photos[0]), "--engine", str(tmp_path / "x.plan")),
        ("verify", str(small_onnx), "--reference", str(tmp_path / "none.npz")),
        ("verify", str(photos[0])),
    ]
    for args in runs:
        out = _cli(*args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.startswith("vitrt: error: "), (args, out.stderr)
        assert "expected" in out.stderr, (args, out.stderr)
        assert out.stdout == "", (args, out.stdout)  # nothing half-printed, no ORT banner on stdout
    ok = _cli(shell=f"{sys.executable} -m vitrt predict {photos[0]} {photos[1]} --engine {small_onnx} | head -1")
    assert ok.returncode == 0 and "Traceback" not in ok.stderr and ok.stdout.strip() == str(photos[0])
