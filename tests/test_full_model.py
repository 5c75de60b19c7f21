"""The full ViT-B/16-384, end to end: `python -m export` -> ONNX fp32, FP16 and INT8 (each through its
parity gate) -> vitrt.Engine. About 4 minutes on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import vitrt
from vitrt.metadata import Metadata

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = subprocess.run([sys.executable, "-m", "export", "--weights", "random", "--seed", "0",
                           "--precision", "fp16,int8", "--calib-dir", "builtin", "--output-dir", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"fp32": out / "b16_384.onnx", "fp16": out / "b16_384_fp16.onnx", "int8": out / "b16_384_int8.onnx",
            "log": proc.stdout}


def test_full_export_contract(full):
    import onnx

    model = onnx.load(full["fp32"], load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["LayerNormalization"] == 25 and ops["Softmax"] == 12  # 12 blocks x 2 + final; 12 attentions
    meta = Metadata.from_onnx(full["fp32"]).data
    assert meta["model"]["name"] == "vit_base_patch16_384.augreg_in21k_ft_in1k" and meta["model"]["kwargs"] == {}
    assert meta["outputs"]["logits"]["shape"] == ["N", 1000] and meta["outputs"]["embedding"]["shape"] == ["N", 768]
    assert meta["weights"] == {"source": "random", "seed": 0, "sha256": None, "note": meta["weights"]["note"]}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_full_parity_reports(full, precision):
    report = json.loads(full[precision].with_name(full[precision].name + ".parity.json").read_text())
    assert report["passed"] and report["precision"] == precision
    assert all(check["held"] for check in report["thresholds"].values())
    photos = report["metrics"]["photos"]["embedding"]["cosine_min"]
    # what was measured on this model (see export.parity.THRESHOLDS), with a margin for other CPUs
    assert photos > {"fp32": 0.999999, "fp16": 0.9999, "int8": 0.99}[precision]


def test_full_int8_structure(full):
    meta = Metadata.from_onnx(full["int8"]).data
    assert meta["precision_pass"]["quantized_ops"] == {"Conv": 1, "MatMul": 48}  # 12 x (qkv, proj, fc1, fc2)
    assert meta["calibration"]["count"] == 32 and meta["calibration"]["method"] == "max"


def test_full_engine(full, photos):
    for precision in ("fp32", "fp16", "int8"):
        with vitrt.Engine(full[precision]) as engine:
            preds = engine.predict(photos[:2])
            assert len(preds) == 2 and all(len(p) == 5 for p in preds)
            assert all(p.label == vitrt.labels.imagenet_labels()[p.index] for p in preds[0])
            emb = engine.embed(photos[0])
            assert emb.shape == (768,) and emb.dtype == np.float32 and np.isfinite(emb).all()
            out = engine.infer(np.stack([engine.preprocess(p) for p in photos[:3]]))
            assert out["logits"].shape == (3, 1000) and out["embedding"].shape == (3, 768)
