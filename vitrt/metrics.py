"""Agreement metrics between a reference's outputs and a candidate's (numpy only).

Definitions (used by the export check, the parity gate and ``make parity``):
- cosine: per sample, cos(ref_i, got_i) computed in float64; reported as mean and min (worst).
- max_abs: max |ref - got| over the whole output; rel = max_abs / max |ref|.
- top1_agree: fraction of samples whose argmax is the same.
- top5_agree: fraction of samples whose reference top-1 class is in the candidate's top-5
  (top-5 accuracy with the reference's answer as the label).
- logit_err: the candidate's largest logit error on a sample in units of that sample's reference
  logit spread (max_j |got_j - ref_j| / std(ref)), worst over the samples: the scale on which a
  top-1 decision can flip.
- With a ``margin`` (the gate's ``decisive_margin``), agreement counts only the *decisive* samples:
  top-1 over those whose reference top-1 leads the second class by more than ``margin`` spreads, top-5
  over those whose top-1 leads the sixth by more. A flip can only happen where the lead is below
  twice the logit error, so a near-tie (random weights, an ambiguous photo) says nothing and is left
  out, while a flip on a decisive sample means the candidate erred beyond what was measured for its
  precision. ``top1_decisive``/``top5_decisive`` give the counts; the agreement is None when none is.
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


def _mean(hits: np.ndarray, keep: np.ndarray) -> float | None:
    return float(hits[keep].mean()) if keep.any() else None


def agreement(ref_logits: np.ndarray, got_logits: np.ndarray, margin: float | None = None) -> dict:
    ref = ref_logits.astype(np.float64)
    ref1 = topk_indices(ref, 1)[:, 0]
    got5 = topk_indices(got_logits, 5)
    spread = ref.std(axis=1)
    spread = np.where(spread > 0, spread, 1.0)
    err = (np.abs(got_logits.astype(np.float64) - ref).max(axis=1) / spread)
    top1, top5 = got5[:, 0] == ref1, (got5 == ref1[:, None]).any(1)
    out = {"logit_err": float(err.max())}
    if margin is None:
        return {**out, "top1_agree": float(top1.mean()), "top5_agree": float(top5.mean())}
    lead = -np.sort(-ref, axis=1)
    k = min(5, ref.shape[1] - 1)
    decisive1 = (lead[:, 0] - lead[:, 1]) / spread > margin
    decisive5 = (lead[:, 0] - lead[:, k]) / spread > margin
    return {**out, "top1_agree": _mean(top1, decisive1), "top5_agree": _mean(top5, decisive5),
            "top1_decisive": int(decisive1.sum()), "top5_decisive": int(decisive5.sum()), "decisive_margin": margin}


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], margin: float | None = None) -> dict:
    """Per-output metrics for every output both have, plus top-k agreement on ``logits`` (over the
    decisive samples only when ``margin`` is given)."""
    out = {name: compare_output(ref[name], got[name]) for name in ref if name in got}
    if "logits" in out:
        out["logits"].update(agreement(ref["logits"], got["logits"], margin))
    return out
