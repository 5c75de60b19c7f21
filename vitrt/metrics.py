"""Agreement metrics between a reference's outputs and a candidate's (numpy only).

Definitions (used by the export check, the parity gate and ``make parity``):
- cosine: per sample, cos(ref_i, got_i) computed in float64; reported as mean and min (worst).
- max_abs: max |ref - got| over the whole output; rel = max_abs / max |ref|.
- top1_agree: fraction of samples whose argmax is the same.
- top5_agree: fraction of samples whose reference top-1 class is in the candidate's top-5
  (top-5 accuracy with the reference's answer as the label).
"""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # two all-zero rows agree perfectly; one zero row against a non-zero one does not
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 1.0, 0.0)).clip(-1.0, 1.0)


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits.astype(np.float64), axis=1, kind="stable")[:, :k]


def compare_output(ref: np.ndarray, got: np.ndarray) -> dict:
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape}, candidate {got.shape}")
    cos = cosine_rows(ref, got)
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "cosine": [float(c) for c in cos],
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "rel": float(diff.max() / scale) if scale > 0 else float(diff.max()),
    }


def agreement(ref_logits: np.ndarray, got_logits: np.ndarray) -> dict:
    ref1 = topk_indices(ref_logits, 1)[:, 0]
    got5 = topk_indices(got_logits, 5)
    return {
        "top1_agree": float((got5[:, 0] == ref1).mean()),
        "top5_agree": float((got5 == ref1[:, None]).any(1).mean()),
    }


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict:
    """Per-output metrics for every output both have, plus top-k agreement on ``logits``."""
    out = {name: compare_output(ref[name], got[name]) for name in ref if name in got}
    if "logits" in out:
        out["logits"].update(agreement(ref["logits"], got["logits"]))
    return out
