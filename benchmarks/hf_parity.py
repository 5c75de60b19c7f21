"""A Hugging Face ViT folder through vitrt against transformers itself, on real photos.

    python -m benchmarks.hf_parity FOLDER [--out artifacts-hf]          # a folder you have
    python -m benchmarks.hf_parity --random-vit-b FOLDER [--labels 7]   # make a random-init ViT-B/16-384 there first

Builds the fp32 ONNX from FOLDER (``make engine WEIGHTS=FOLDER PRECISION=fp32 PLAN=no``), then for each
of scikit-image's photos: vitrt's crop against ``ViTImageProcessorPil``'s resized image (pixel-exact
expected) and the torchvision ``ViTImageProcessor``'s (within one level), the ONNX logits and embedding
(the CLS token after the final LayerNorm) against ``ViTForImageClassification``'s forward (cosine), and
the top-1 label against ``id2label``. Prints a table; transformers is needed here, never by vitrt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_random_vit_b(folder: Path, labels: int, seed: int = 0) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(seed)
    names = {i: f"class {i}" for i in range(labels)}
    cfg = ViTConfig(image_size=384, num_labels=labels, id2label=names, label2id={v: k for k, v in names.items()})
    ViTForImageClassification(cfg).eval().save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 384, "width": 384}).save_pretrained(folder)


def run(folder: Path, out: Path, log=print) -> list[dict]:
    import torch
    from PIL import Image
    from transformers import ViTForImageClassification, ViTImageProcessor, ViTImageProcessorPil

    import vitrt
    from export.build import BuildOptions, build
    from export.images import builtin_photos

    onnx = build(BuildOptions(weights=str(folder), output_dir=out, precision="fp32", plan="no"), log=log)["fp32"]
    hf = ViTForImageClassification.from_pretrained(folder).eval()
    pil, tv = ViTImageProcessorPil.from_pretrained(folder), ViTImageProcessor.from_pretrained(folder)
    rows = []
    with vitrt.Engine(onnx) as engine:
        for photo in builtin_photos():
            img = Image.open(photo).convert("RGB")
            crop = engine.preprocess(photo)
            ref = pil(img, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
            other = tv(img, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0].numpy()
            got = engine.infer(crop[None])
            with torch.inference_mode():
                x = pil(img, return_tensors="pt")["pixel_values"]
                logits, cls = hf(x).logits[0].numpy(), hf.vit(x).last_hidden_state[0, 0].numpy()

            def cos(a, b):
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

            rows.append({"photo": photo.name,
                         "pil_differing_pixels": int((crop != ref.transpose(1, 2, 0).round().astype(np.uint8)).sum()),
                         "torchvision_max_level_diff": int(np.abs(crop.astype(int) - other.transpose(1, 2, 0).round().astype(int)).max()),
                         "logits_cosine": cos(got["logits"][0], logits), "embedding_cosine": cos(got["embedding"][0], cls),
                         "label": engine.predict(photo, topk=1)[0].label,
                         "label_hf": hf.config.id2label[int(np.argmax(logits))]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a Hugging Face ViTForImageClassification folder")
    p.add_argument("--random-vit-b", action="store_true", help="first save a random-init ViT-B/16-384 there (default: off)")
    p.add_argument("--labels", type=int, default=7, help="classes of that random model (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("artifacts-hf"), help="where the ONNX goes (default: %(default)s)")
    args = p.parse_args(argv)
    if args.random_vit_b:
        make_random_vit_b(args.folder, args.labels)
    rows = run(args.folder, args.out, log=lambda m: None)
    for r in rows:
        print(f"{r['photo']:24s} PIL pixels differing {r['pil_differing_pixels']:3d}, torchvision max diff "
              f"{r['torchvision_max_level_diff']}, logits cos {r['logits_cosine']:.8f}, embedding cos "
              f"{r['embedding_cosine']:.8f}, label {r['label']!r} (transformers {r['label_hf']!r})")
    worst = min(min(r["logits_cosine"], r["embedding_cosine"]) for r in rows)
    print(f"worst cosine {worst:.8f}; PIL-exact crops {sum(r['pil_differing_pixels'] == 0 for r in rows)}/{len(rows)}; "
          f"labels equal {sum(r['label'] == r['label_hf'] for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
