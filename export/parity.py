"""Parity of an ONNX artifact against the PyTorch FP32 model, on a fixed image set.

The reference is independent of vitrt's runtime: photos go through timm's own eval transform into
the timm model; the candidate gets vitrt's preprocessing and runs on ONNX Runtime (CPU). A random
uint8 batch runs through both in several batch sizes, which also checks the dynamic batch axis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .images import builtin_photos, synthetic_batch
from .metrics import compare

#: Batch sizes the synthetic images are split into: 1 + 3 + 8 = 12 images.
BATCH_SIZES = (1, 3, 8)


def image_set(photos: Sequence[os.PathLike] | None = None, size: tuple[int, int] = (384, 384),
              seed: int = 0) -> dict[str, Any]:
    """The fixed evaluation set: photos (paths) and a deterministic synthetic uint8 batch."""
    return {"photos": [Path(p) for p in (photos if photos is not None else builtin_photos(gray=False))],
            "synthetic": synthetic_batch(sum(BATCH_SIZES), size, seed)}


def reference_outputs(wrapper, data_config: dict, images: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """PyTorch FP32 outputs: photos through timm's transform, synthetic through the wrapper."""
    import timm.data
    import torch
    from PIL import Image

    transform = timm.data.create_transform(**data_config, is_training=False)
    model = wrapper.model
    out: dict[str, dict[str, np.ndarray]] = {}
    with torch.inference_mode():
        if images["photos"]:
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in images["photos"]])
            feats = model.forward_features(x)
            emb = model.forward_head(feats, pre_logits=True)
            out["photos"] = {"logits": model.get_classifier()(emb).numpy(), "embedding": emb.numpy()}
        syn = torch.from_numpy(images["synthetic"])
        if wrapper.input_format != "uint8":
            from vitrt.preprocess import normalize_nchw

            syn = torch.from_numpy(normalize_nchw(images["synthetic"], data_config))
        res = wrapper(syn)
        out["synthetic"] = {"logits": res[0].numpy(), "embedding": res[1].numpy()}
    return out


def candidate_outputs(onnx_path: os.PathLike, images: dict[str, Any], threads: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Outputs of the artifact through vitrt.Engine on ONNX Runtime's CPU provider."""
    import vitrt
    from vitrt.preprocess import normalize_nchw

    out: dict[str, dict[str, np.ndarray]] = {}
    with vitrt.Engine(onnx_path, providers=["CPUExecutionProvider"], threads=threads) as engine:
        nchw = engine.metadata.input_layout == "NCHW"
        prep = (lambda b: normalize_nchw(b, engine.metadata.data_config)) if nchw else (lambda b: b)
        if images["photos"]:
            batch = np.stack([engine.preprocess(p) for p in images["photos"]])
            out["photos"] = engine.infer(prep(batch))
        parts, start = [], 0
        for n in BATCH_SIZES:
            parts.append(engine.infer(prep(images["synthetic"][start:start + n])))
            start += n
        out["synthetic"] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return out


def check_thresholds(metrics: dict, thresholds: dict[str, dict[str, float]]) -> dict:
    """Every threshold with its value and whether it held. ``thresholds`` maps output -> metric -> limit;
    limits on ``max_abs``/``rel`` are upper bounds, all others lower bounds. Worst case over subsets."""
    checks = {}
    for output, limits in thresholds.items():
        for metric, limit in limits.items():
            upper = metric in ("max_abs", "rel", "mean_abs")
            values = [m[output][metric] for m in metrics.values() if output in m and metric in m[output]]
            if not values:
                continue
            value = max(values) if upper else min(values)
            held = value <= limit if upper else value >= limit
            checks[f"{output}.{metric}"] = {"value": value, "limit": limit, "bound": "max" if upper else "min",
                                            "held": bool(held)}
    return checks


def parity_report(reference: dict, candidate: dict, thresholds: dict, **info: Any) -> dict:
    metrics = {subset: compare(reference[subset], candidate[subset]) for subset in reference}
    checks = check_thresholds(metrics, thresholds)
    return {**info, "metrics": metrics, "thresholds": checks, "passed": all(c["held"] for c in checks.values())}


def format_report(report: dict) -> str:
    """A few lines for the terminal: per subset, the headline numbers, then each threshold."""
    lines = [f"parity of {report.get('artifact', '?')} ({report.get('precision', '?')}) vs PyTorch FP32:"]
    for subset, m in report["metrics"].items():
        lg, em = m.get("logits", {}), m.get("embedding", {})
        lines.append(f"  {subset:<9} n={len(lg.get('cosine', []))}: logits cos min {lg.get('cosine_min', float('nan')):.7f} "
                     f"max|d| {lg.get('max_abs', float('nan')):.3g}  embedding cos min {em.get('cosine_min', float('nan')):.7f} "
                     f"max|d| {em.get('max_abs', float('nan')):.3g}  top1 {lg.get('top1_agree', float('nan')):.3f} "
                     f"top5 {lg.get('top5_agree', float('nan')):.3f}")
    for name, c in report["thresholds"].items():
        op = "<=" if c["bound"] == "max" else ">="
        lines.append(f"  {'ok  ' if c['held'] else 'FAIL'} {name} = {c['value']:.7g} {op} {c['limit']}")
    return "\n".join(lines)
