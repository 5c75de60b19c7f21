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


def check_thresholds(metrics: dict, thresholds: dict[str, dict[str, dict[str, float]]]) -> dict:
    """Every threshold with its value and whether it held.

    ``thresholds`` maps subset ("photos", "synthetic", or "*" for the worst over all subsets) ->
    output -> metric -> limit. Limits on ``max_abs``/``rel``/``mean_abs`` are upper bounds, all others
    lower bounds."""
    checks = {}
    for subset, outputs in thresholds.items():
        subsets = list(metrics) if subset == "*" else [subset]
        for output, limits in outputs.items():
            for metric, limit in limits.items():
                upper = metric in ("max_abs", "rel", "mean_abs")
                values = [metrics[s][output][metric] for s in subsets
                          if s in metrics and output in metrics[s] and metric in metrics[s][output]]
                if not values:
                    continue
                value = max(values) if upper else min(values)
                held = value <= limit if upper else value >= limit
                key = f"{output}.{metric}" if subset == "*" else f"{subset}.{output}.{metric}"
                checks[key] = {"value": value, "limit": limit, "bound": "max" if upper else "min", "held": bool(held)}
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


# --- the parity gate ------------------------------------------------------------------------------
#: Thresholds per precision: subset ("*" = worst over all) -> output -> metric -> limit.
#: - fp32: ORT vs PyTorch differ only in summation order: measured max |diff| 2.6e-6 / 4.5e-6 at O(1)
#:   magnitudes (relative 1.3e-6), cosine 1 - 1e-12. 1e-4 relative and cosine 0.99999 leave 25x+
#:   headroom; a real defect (wrong normalization, swapped layout) gives 1e-2 and more.
#: - fp16: half precision keeps 11 significant bits (relative rounding 4.9e-4 per op); over 12
#:   blocks the error stays near 1e-3, i.e. cosine > 0.9999 (measured: 0.9999996). 0.999 allows
#:   10x more error and still catches a real overflow (an inf/NaN or a clipped activation gives < 0.99).
#: - int8 / fp8: 8-bit activations and weights on the 48 Linear layers cost accuracy. Measured on the
#:   full model, ModelOpt max calibration on the 32 builtin images: photos cosine 0.9938 worst, 0.996
#:   mean; synthetic images (uniform noise: out of the calibration distribution) 0.953 worst, 0.977
#:   mean. The gate: photos >= 0.98 worst and >= 0.99 mean, synthetic >= 0.90 worst and >= 0.95
#:   mean. Quantizing every op type (Add, Softmax, LayerNorm inputs, attention) gives 0.6-0.8: caught.
#: - top-1 / top-5 agreement, on photos: gated only with real weights. Random-init logits are near
#:   ties, so a flip there says nothing (it is reported all the same). With 8 photos one flip is 0.125.
_Q_GATE = {"photos": {"logits": {"cosine_min": 0.98, "cosine_mean": 0.99, "top1_agree": 0.75, "top5_agree": 0.875},
                      "embedding": {"cosine_min": 0.98, "cosine_mean": 0.99}},
           "synthetic": {"logits": {"cosine_min": 0.90, "cosine_mean": 0.95},
                         "embedding": {"cosine_min": 0.90, "cosine_mean": 0.95}}}
THRESHOLDS: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "fp32": {"*": {"logits": {"cosine_min": 0.99999, "rel": 1e-4}, "embedding": {"cosine_min": 0.99999, "rel": 1e-4}}},
    "fp16": {"*": {"logits": {"cosine_min": 0.999}, "embedding": {"cosine_min": 0.999}},
             "photos": {"logits": {"top1_agree": 0.875, "top5_agree": 1.0}}},
    "int8": _Q_GATE,
    "fp8": _Q_GATE,
}
AGREEMENT = ("top1_agree", "top5_agree")


def thresholds_for(precision: str, random_weights: bool) -> dict:
    """The gate for ``precision``; top-k agreement dropped for random weights (see THRESHOLDS)."""
    out = {}
    for subset, outputs in THRESHOLDS[precision].items():
        kept = {o: {m: v for m, v in limits.items() if not (random_weights and m in AGREEMENT)}
                for o, limits in outputs.items()}
        kept = {o: limits for o, limits in kept.items() if limits}
        if kept:
            out[subset] = kept
    return out


def parse_gate_overrides(items: list[str] | None) -> dict[str, float]:
    """``["int8.photos.embedding.cosine_min=0.95", ...]`` -> dict; checks every part of each key."""
    from vitrt.errors import BuildError

    out: dict[str, float] = {}
    metrics = ("cosine_min", "cosine_mean", "max_abs", "mean_abs", "rel") + AGREEMENT
    for item in items or []:
        key, _, value = item.partition("=")
        parts = key.split(".")
        ok = (len(parts) == 4 and parts[0] in THRESHOLDS and parts[1] in ("*", "photos", "synthetic")
              and parts[2] in ("logits", "embedding") and parts[3] in metrics)
        try:
            number = float(value)
        except ValueError:
            ok = False
        if not ok:
            raise BuildError(f"--gate {item!r}; expected PRECISION.SUBSET.OUTPUT.METRIC=NUMBER with PRECISION in "
                             f"{sorted(THRESHOLDS)}, SUBSET in *, photos, synthetic, OUTPUT logits or embedding, "
                             f"METRIC in {', '.join(metrics)}")
        out[key] = number
    return out


def apply_overrides(gate: dict, precision: str, overrides: dict[str, float]) -> dict:
    """``gate`` with the overrides for ``precision`` applied (the report then shows the limits used)."""
    gate = {s: {o: dict(m) for o, m in outs.items()} for s, outs in gate.items()}
    for key, value in overrides.items():
        p, subset, output, metric = key.split(".")
        if p == precision:
            gate.setdefault(subset, {}).setdefault(output, {})[metric] = value
    return gate
