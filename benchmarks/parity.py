"""``make parity``: accuracy parity of every artifact against timm's PyTorch FP32 model.

The reference is independent of vitrt: timm's model (weights from the artifacts' metadata) fed by
timm's own eval transform. Each candidate artifact runs through ``vitrt.Engine`` with vitrt's
preprocessing, i.e. exactly as it serves. Per candidate: mean and worst cosine of logits and of
embeddings, max abs error, top-1 / top-5 agreement with the reference, and top-1 / top-5 accuracy
when labels are given. Writes reports/parity.{json,md,png} and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .common import REPORTS, find_artifacts, machine_info, markdown_table, reference_model, write_reports

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# --- the image set --------------------------------------------------------------------------------
def synthetic_images(n: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """``n`` deterministic PNGs of assorted sizes and content (noise, gradients, blocks)."""
    from PIL import Image

    from export.images import synthetic_batch

    sizes = [(500, 375), (375, 500), (640, 480), (384, 384), (1024, 683), (300, 300), (451, 300), (800, 200)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        arr = synthetic_batch(i % 3 + 1, (h, w), seed=seed + i)[-1]
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append((f"synthetic_{i:02d}_{w}x{h}.png", buf.getvalue()))
    return out


def read_labels(images: Path, labels: Path | None, class_names: list[str] | None = None) -> dict[str, int]:
    """file (relative to ``images``) -> class index, from a CSV ``file,class_index`` or from class folders
    named by the artifact's own class names (a fine-tune's), WordNet ids (n02123045) or class indices."""
    from vitrt.errors import InputError
    from vitrt.labels import imagenet_synsets

    out: dict[str, int] = {}
    if labels is not None:
        with open(labels, newline="") as f:
            for row in csv.reader(f):
                if not row or row[0].strip().lower() in ("file", "filename", "image", "path"):
                    continue
                if len(row) < 2 or not row[1].strip().lstrip("-").isdigit():
                    raise InputError(f"{labels}: row {row!r}; expected 'file,class_index'")
                out[row[0].strip()] = int(row[1])
        return out
    synsets = {s: i for i, s in enumerate(class_names or imagenet_synsets())}
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        name = folder.name
        if name in synsets:
            index = synsets[name]
        elif name.isdigit():
            index = int(name)
        else:
            raise InputError(f"class folder {name!r} is neither " + ("one of the artifact's class names" if class_names
                             else "a WordNet id (n02123045)") + " nor a class index; expected class folders named so, "
                             "or LABELS=file.csv with 'file,class_index' rows")
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                out[p.relative_to(images).as_posix()] = index
    return out


def image_set(images: Path | None = None, labels: Path | None = None, limit: int | None = None,
              synthetic: int = 8, class_names: list[str] | None = None) -> list[dict[str, Any]]:
    """Items ``{"name", "data" (bytes), "label" (int or None)}``. Default: builtin photos + synthetic."""
    items: list[dict[str, Any]] = []
    if images is None:
        from export.images import builtin_photos

        items = [{"name": p.name, "data": p.read_bytes(), "label": None} for p in builtin_photos()]
        items += [{"name": n, "data": d, "label": None} for n, d in synthetic_images(synthetic)]
        return items[:limit] if limit else items
    images = Path(images).expanduser()
    label_map = (read_labels(images, labels, class_names)
                 if (labels is not None or any(p.is_dir() for p in images.iterdir())) else {})
    files = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if label_map:
        files = [p for p in files if p.relative_to(images).as_posix() in label_map]
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    for p in files:
        rel = p.relative_to(images).as_posix()
        items.append({"name": rel, "data": p.read_bytes(), "label": label_map.get(rel)})
    return items


# --- running both sides ---------------------------------------------------------------------------
def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def reference_outputs(model, items: list[dict], batch: int = 8, progress: bool = True) -> dict[str, np.ndarray]:
    """timm's PyTorch FP32 model through timm's own transform (shared with the build's gate)."""
    from export.gate import timm_reference

    return timm_reference(model, [it["data"] for it in items], batch,
                          (lambda chunks: _progress(chunks, "reference (PyTorch FP32)", True)) if progress else None)


def candidate_outputs(artifact: Path, items: list[dict], batch: int = 8, progress: bool = True) -> tuple[dict, str, str]:
    import vitrt

    logits, emb = [], []
    with vitrt.Engine(artifact) as engine:
        for chunk in _progress(list(_batches(items, batch)), artifact.name, progress):
            x = np.stack([engine.preprocess(it["data"]) for it in chunk])
            if engine.metadata.input_layout == "NCHW":
                from vitrt.preprocess import normalize_nchw

                x = normalize_nchw(x, engine.metadata.data_config)
            out = engine.infer(x)
            logits.append(out["logits"])
            emb.append(out["embedding"])
        name, precision = engine.backend.name, engine.metadata.precision
    return {"logits": np.concatenate(logits), "embedding": np.concatenate(emb)}, name, precision


def _progress(seq, desc: str, enabled: bool):
    if not enabled:
        return seq
    from tqdm import tqdm

    return tqdm(seq, desc=desc, unit="batch", leave=False, file=sys.stderr)


# --- metrics and report -------------------------------------------------------------------------------
def accuracy(logits: np.ndarray, labels: list[int | None]) -> dict[str, float] | None:
    """top-1 / top-5 accuracy over the items that have a label (None when none has one)."""
    idx = [i for i, y in enumerate(labels) if y is not None]
    if not idx:
        return None
    y = np.array([labels[i] for i in idx])
    top5 = np.argsort(-logits[idx].astype(np.float64), axis=1, kind="stable")[:, :5]
    return {"top1": float((top5[:, 0] == y).mean()), "top5": float((top5 == y[:, None]).any(1).mean()), "n": len(idx)}


def evaluate(reference: dict, candidates: dict[str, dict], labels: list[int | None]) -> dict:
    from vitrt.metrics import compare

    rows = {}
    for name, cand in candidates.items():
        m = compare(reference, cand["outputs"])
        rows[name] = {"backend": cand["backend"], "precision": cand["precision"], "metrics": m,
                      "accuracy": accuracy(cand["outputs"]["logits"], labels)}
    return {"reference_accuracy": accuracy(reference["logits"], labels), "candidates": rows}


def to_markdown(result: dict) -> str:
    labelled = result["reference_accuracy"] is not None
    header = ["artifact", "backend", "logits cos mean", "logits cos worst", "emb cos mean", "emb cos worst",
              "logits max abs", "top-1 agree", "top-5 agree"] + (["top-1 acc", "top-5 acc"] if labelled else [])
    rows = []
    if labelled:
        ra = result["reference_accuracy"]
        rows.append(["PyTorch FP32 (reference)", "torch", "1", "1", "1", "1", "0", "1", "1",
                     f"{ra['top1']:.4f}", f"{ra['top5']:.4f}"])
    for name, r in result["candidates"].items():
        lg, em = r["metrics"]["logits"], r["metrics"]["embedding"]
        row = [name, r["backend"], f"{lg['cosine_mean']:.7f}", f"{lg['cosine_min']:.7f}", f"{em['cosine_mean']:.7f}",
               f"{em['cosine_min']:.7f}", f"{lg['max_abs']:.3g}", f"{lg['top1_agree']:.3f}", f"{lg['top5_agree']:.3f}"]
        if labelled:
            acc = r["accuracy"]
            row += [f"{acc['top1']:.4f}", f"{acc['top5']:.4f}"]
        rows.append(row)
    meta = result["meta"]
    head = (f"Parity vs PyTorch FP32 ({meta['model']}, weights: {meta['weights']}), {meta['images']} images "
            f"({meta['image_set']}), {meta['date']}, {meta['machine']['cpu']}"
            + (f", {meta['machine']['gpu']['name']}" if "gpu" in meta["machine"] else ""))
    top1 = result.get("reference_top1") or {}
    shown = "\n".join(f"- {name}: {label}" for name, label in list(top1.items())[:20])
    return head + "\n\n" + markdown_table(header, rows) + (
        f"\n\nPyTorch FP32's top-1 class per image (the artifact's class names):\n\n{shown}" if shown else "")


def figure(result: dict, names: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    for name, r in result["candidates"].items():
        cos = np.array(r["metrics"]["embedding"]["cosine"])
        ax.plot(np.arange(len(cos)), np.maximum(1.0 - cos, 1e-12), marker="o", ms=3, lw=1, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("image")
    ax.set_ylabel("1 - cosine(embedding, PyTorch FP32)")
    ax.set_title("Per-image embedding agreement with PyTorch FP32 (lower is better)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, fontsize=6)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def run(artifacts: Path, images: Path | None = None, labels: Path | None = None, limit: int | None = None,
        synthetic: int = 8, out: Path = REPORTS, progress: bool = True, weights: str | None = None) -> dict:
    from vitrt.errors import ArtifactError

    found = find_artifacts(artifacts)
    onnx = [p for p in found if p.suffix == ".onnx"]
    if not onnx:
        raise ArtifactError(f"no vitrt artifacts in {artifacts}; build them with `make engine`")
    model, meta = reference_model(onnx[0], weights)
    from vitrt.metadata import Metadata

    names = Metadata(meta).labels
    items = image_set(images, labels, limit, synthetic, class_names=meta.get("class_names"))
    if not items:
        raise ArtifactError(f"no images found in {images}")
    t0 = time.perf_counter()
    reference = reference_outputs(model, items, progress=progress)
    candidates = {}
    for path in found:
        outputs, backend, precision = candidate_outputs(path, items, progress=progress)
        candidates[path.name] = {"outputs": outputs, "backend": backend, "precision": precision}
    result = evaluate(reference, candidates, [it["label"] for it in items])
    # what the PyTorch reference calls each image, in the artifact's own class names
    result["reference_top1"] = {it["name"]: names[int(i)] for it, i in zip(items, np.argmax(reference["logits"], axis=1))}
    w = meta["weights"]
    result["meta"] = {"model": meta["model"]["name"], "weights": w["source"] + (f" seed {w.get('seed')}" if w["source"] == "random" else ""),
                      "images": len(items), "image_set": str(images) if images else "builtin photos + synthetic",
                      "image_names": [it["name"] for it in items], "seconds": round(time.perf_counter() - t0, 1),
                      "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
                      "command": " ".join(["python -m benchmarks.parity"] + sys.argv[1:])}
    md = to_markdown(result)
    result["paths"] = {k: str(v) for k, v in write_reports("parity", result, md, figure(result, result["meta"]["image_names"]), out).items()}
    print(md)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parity", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Accuracy parity of every artifact vs timm's PyTorch FP32 model.")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifact folder (default: %(default)s)")
    p.add_argument("--images", type=Path, default=None,
                   help="image folder (ImageNet-style class folders, or flat with --labels) (default: builtin photos + synthetic)")
    p.add_argument("--labels", type=Path, default=None, help="CSV of file,class_index (default: from class folders)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images, evenly spaced (default: all)")
    p.add_argument("--synthetic", type=int, default=8, help="synthetic images in the default set (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the checkpoint the artifacts were built from, where it was a file or folder: their "
                        "metadata keeps its name and sha256, not its path (default: none: hub or random weights)")
    args = p.parse_args(argv)
    from vitrt.errors import VitrtError

    try:
        run(args.artifacts, args.images, args.labels, args.limit, args.synthetic, args.out, weights=args.weights)
    except VitrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
