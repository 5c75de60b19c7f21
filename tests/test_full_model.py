"""The full ViT-B/16-384, end to end: `python -m export` -> ONNX (verified) -> vitrt.Engine."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import vitrt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = subprocess.run([sys.executable, "-m", "export", "--weights", "random", "--seed", "0",
                           "--output-dir", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok   logits.cosine_min" in proc.stdout
    return out / "b16_384.onnx"


def test_full_export_contract(full_onnx):
    import onnx

    model = onnx.load(full_onnx, load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["LayerNormalization"] == 25 and ops["Softmax"] == 12  # 12 blocks x 2 + final; 12 attentions
    meta = vitrt.metadata.Metadata.from_onnx(full_onnx).data
    assert meta["model"]["name"] == "vit_base_patch16_384.augreg_in21k_ft_in1k" and meta["model"]["kwargs"] == {}
    assert meta["outputs"]["logits"]["shape"] == ["N", 1000] and meta["outputs"]["embedding"]["shape"] == ["N", 768]
    assert meta["weights"] == {"source": "random", "seed": 0, "sha256": None, "note": meta["weights"]["note"]}
    report = json.loads(full_onnx.with_name("b16_384.onnx.parity.json").read_text())
    assert report["passed"]
    for check in report["thresholds"].values():
        assert check["held"]


def test_full_engine(full_onnx, photos):
    with vitrt.Engine(full_onnx) as engine:
        preds = engine.predict(photos[:2])
        assert len(preds) == 2 and all(len(p) == 5 for p in preds)
        assert all(p.label == vitrt.labels.imagenet_labels()[p.index] for p in preds[0])
        emb = engine.embed(photos[0])
        assert emb.shape == (768,) and emb.dtype == np.float32 and np.isfinite(emb).all()
        out = engine.infer(np.stack([engine.preprocess(p) for p in photos[:3]]))
        assert out["logits"].shape == (3, 1000) and out["embedding"].shape == (3, 768)
