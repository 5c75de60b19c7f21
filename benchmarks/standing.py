"""Where vitrt's CPU default stands in ``make bench``: every row's accuracy, the verdict against the
fastest accurate peer, and the default's share of the machine's peak MAC rate.

- Accuracy: each row's embedding on the photos scikit-image ships (preprocessed by vitrt, one image
  per call), cosine against PyTorch eager FP32 on the same crops: mean and worst.
- Verdict (issue 16's goal): at each batch size, vitrt's CPU default must be at least
  :data:`LEAD` x the fastest other row whose worst cosine is at least :data:`PEER_WORST`, with its own
  cosine at least :data:`OWN_MEAN` mean and :data:`OWN_WORST` worst; where the two rows' spreads
  (fastest to slowest timed call) overlap, the point is "within noise", whatever the ratio.
- Limit: the MACs of one image (:func:`vit_macs`, from the model's shape) over the peak MAC/s of the
  cores in use (:mod:`vitrt.cpu`), all at the int8 rate: int8-cpu runs every MatMul in int8, the
  attention ones included (export/cpu_attention.py); only the patch embedding (0.3 GMAC) stays FP32.
"""

from __future__ import annotations

import numpy as np

LEAD = 1.1  # how much faster than the fastest accurate peer vitrt's CPU default must be
PEER_WORST = 0.98  # a peer counts when its worst photo cosine is at least this
OWN_MEAN, OWN_WORST = 0.99, 0.98  # vitrt's own accuracy bar (stricter than the int8-cpu gate in export/gate.py)


def photo_crops() -> np.ndarray:
    """scikit-image's photos (color and grayscale), as vitrt's uint8 384x384 crops."""
    import vitrt
    from export.images import builtin_photos

    return np.stack([vitrt.preprocess(p) for p in builtin_photos(gray=True)])


def embeddings(runner, crops: np.ndarray) -> np.ndarray:
    """``runner``'s embeddings of ``crops``, one image per call, as float64."""
    return np.concatenate([runner.infer(crops[i:i + 1])["embedding"] for i in range(len(crops))]).astype(np.float64)


def cosines(e: np.ndarray, ref: np.ndarray) -> dict:
    """{"cos_mean", "cos_worst", "n"}: the row-wise cosine of embeddings ``e`` against ``ref``."""
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True) * (ref / np.linalg.norm(ref, axis=1, keepdims=True))).sum(1)
    return {"cos_mean": float(cos.mean()), "cos_worst": float(cos.min()), "n": len(cos)}


def accuracy(runners: list, crops: np.ndarray) -> dict[str, dict]:
    """{row: {"cos_mean", "cos_worst", "n"}}: embedding cosine vs the first runner (PyTorch eager FP32)."""
    ref = embeddings(runners[0], crops)
    return {r.name: cosines(ref if r is runners[0] else embeddings(r, crops), ref) for r in runners}


def verdict(results: dict, acc: dict, default: str | None, batches: list[int]) -> dict:
    """Per mode and batch: the default's median speed over the fastest accurate other row's. Medians
    (batch / p50), not the mean rate: one stall of a noisy machine moves a mean of a dozen calls by
    tens of percent (seen: 0.90x and 1.25x for the same two rows in one run), a median hardly.

    Each point's call: "first" (at least :data:`LEAD` x, own accuracy met, and the two rows' spreads,
    fastest to slowest call, apart), "not first" (spreads apart, below the lead or own accuracy not
    met), or "within noise" (the spreads overlap: these calls cannot tell the rows apart)."""
    if default is None:
        return {"default": None, "why": "vitrt's CPU default is not among the rows timed"}
    own = acc[default]
    out = {"default": default, "lead": LEAD, "peer_worst": PEER_WORST,
           "own_accurate": own["cos_mean"] >= OWN_MEAN and own["cos_worst"] >= OWN_WORST, "points": {}}
    for mode, rows in results.items():
        for b in map(str, batches):
            if b not in rows.get(default, {}):
                continue
            peers = {n: 1 / r[b]["p50"] for n, r in rows.items()
                     if n != default and b in r and acc[n]["cos_worst"] >= PEER_WORST}
            if not peers:
                continue
            best = max(peers, key=peers.get)
            mine, theirs = rows[default][b], rows[best][b]
            ratio = (1 / mine["p50"]) / peers[best]
            spreads = {default: [mine.get("min"), mine.get("max")], best: [theirs.get("min"), theirs.get("max")]}
            known = None not in spreads[default] + spreads[best]
            noise = known and mine["min"] <= theirs["max"] and theirs["min"] <= mine["max"]
            first = bool(ratio >= LEAD and out["own_accurate"])
            call = "within noise" if noise else "first" if first else "not first"
            out["points"][f"{mode} b{b}"] = {"fastest_peer": best, "ratio": ratio, "first": first and not noise,
                                             "call": call, "spread_ms": spreads if known else None,
                                             "calls": [mine["iters"], theirs["iters"]]}
    return out


def vit_macs(model) -> dict[str, float]:
    """Multiply-accumulates of one image through a timm ViT, from its shape: ``linear`` (patch
    embedding, qkv, projection, MLP, head) and ``attention`` (Q.K^T and attention.V).
    ViT-B/16 at 384: 49.4 G and 6.1 G."""
    pe = model.patch_embed
    patches = pe.num_patches
    tokens = patches + getattr(model, "num_prefix_tokens", 1)
    d = model.embed_dim
    patch_in = pe.proj.in_channels * pe.proj.kernel_size[0] * pe.proj.kernel_size[1]
    linear = patches * patch_in * d
    for blk in model.blocks:
        hidden = blk.mlp.fc1.out_features
        linear += tokens * (d * 3 * d + d * d + 2 * d * hidden)
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "in_features"):
        linear += head.in_features * head.out_features
    attention = len(model.blocks) * 2 * tokens * tokens * d
    return {"linear": float(linear), "attention": float(attention)}


def limit(img_s: float, macs: dict, threads: int) -> dict:
    """The machine's peak for ``threads`` cores and the share of it that ``img_s`` images/s reach."""
    from vitrt.cpu import peak_macs, peak_macs_per_cycle, read_cpuinfo

    cpu = read_cpuinfo()
    peak = peak_macs(cpu, threads)
    out = {"cores": threads, "clock_mhz": cpu.mhz, "clock_source": cpu.clock_source,
           "per_cycle": {k: {"macs": n, "instruction": i} for k, (n, i) in peak_macs_per_cycle(cpu).items()},
           "peak_gmac_s": {k: v / 1e9 for k, v in peak.items()}, "gmac_per_image": {k: v / 1e9 for k, v in macs.items()}}
    if "int8" in peak:
        total = macs["linear"] + macs["attention"]
        out["img_s_limit_int8"] = peak["int8"] / total
        out["share_int8"] = img_s / out["img_s_limit_int8"]
    return out
