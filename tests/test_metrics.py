"""The gate's metrics: top-k agreement over decisive images only, and how the gate reads it."""

from __future__ import annotations

import numpy as np
import pytest

from vitrt.metrics import agreement
from vitrt.verify import check_thresholds, parity_report


def _logits(leads: list[float], classes: int = 20, seed: int = 0) -> np.ndarray:
    """Rows with unit-spread noise where class i % classes leads the runner-up by ``leads[i]`` spreads."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, lead in enumerate(leads):
        row = rng.normal(0, 0.01, classes)
        row[(i + 1) % classes] = 1.0
        row[i % classes] = 1.0 + lead
        rows.append(row / row.std() * 1.0)
    return np.array(rows)


def test_a_flip_counts_only_where_the_lead_is_decisive():
    ref = _logits([0.01, 5.0, 5.0])  # image 0: a near-tie; 1 and 2: clear leads
    got = ref.copy()
    got[0, [0, 1]] = got[0, [1, 0]]  # the near-tie flips: says nothing
    every = agreement(ref, got)
    assert every["top1_agree"] == pytest.approx(2 / 3)  # without a margin, the flip counts
    decisive = agreement(ref, got, margin=1.0)
    assert decisive["top1_agree"] == 1.0 and decisive["top1_decisive"] == 2
    got[1, [1, 2]] = got[1, [2, 1]]  # a decisive image flips: the candidate erred beyond the margin
    assert agreement(ref, got, margin=1.0)["top1_agree"] == 0.5
    assert agreement(ref, got, margin=1.0)["logit_err"] > 1.0  # and its logit error says how far


def test_no_decisive_image_holds_with_a_note_and_cosines_still_gate():
    ref = _logits([0.01, 0.02])
    got = ref[:, ::-1].copy()  # everything swapped: top-1 flips everywhere, cosines collapse
    metrics = {"photos": {"logits": {**agreement(ref, got, margin=1.0), "cosine_min": 0.1}}}
    checks = check_thresholds(metrics, {"photos": {"logits": {"decisive_margin": 1.0, "top1_agree": 0.75,
                                                                "cosine_min": 0.97}}})
    assert checks["photos.logits.top1_agree"]["held"] and checks["photos.logits.top1_agree"]["value"] is None
    assert "no decisive image" in checks["photos.logits.top1_agree"]["note"]
    assert not checks["photos.logits.cosine_min"]["held"] and "photos.logits.decisive_margin" not in checks


def test_parity_report_passes_the_gates_margin_to_the_metrics():
    ref = {"logits": _logits([0.01, 5.0]), "embedding": np.ones((2, 4))}
    got = {"logits": ref["logits"].copy(), "embedding": np.ones((2, 4))}
    got["logits"][0, [0, 1]] = got["logits"][0, [1, 0]]
    gate = {"photos": {"logits": {"decisive_margin": 1.0, "top1_agree": 1.0}}}
    report = parity_report({"photos": ref}, {"photos": got}, gate)
    assert report["passed"] and report["metrics"]["photos"]["logits"]["top1_decisive"] == 1
    strict = parity_report({"photos": ref}, {"photos": got}, {"photos": {"logits": {"top1_agree": 1.0}}})
    assert not strict["passed"]  # the same flip, counted without a margin
