"""SmoothQuant's migration (export/smooth.py) on the small ViT's fp32 graph: the same function, new weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.smooth import KINDS, linear_layers, migrate
from tests.conftest import SMALL_KWARGS


def _run(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits", "embedding"], {"image": x})


@pytest.fixture(scope="module")
def calib():
    from export.images import synthetic_batch

    return synthetic_batch(4, (384, 384), seed=3)


def test_migration_keeps_the_function_and_moves_the_ranges(small_onnx, calib, photos):
    from vitrt.preprocess import preprocess

    before = onnx.load(str(small_onnx))
    after = onnx.load(str(small_onnx))
    done = migrate(after, calib, alpha=0.5)
    depth = SMALL_KWARGS["depth"]
    assert done["migrated"] == {k: depth for k in KINDS} and not done["skipped"]
    # the weights changed (the migration is not a no-op) ...
    w0 = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer}
    w1 = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    changed = [k for k in w0 if w0[k].shape == w1[k].shape and not np.array_equal(w0[k], w1[k])]
    assert len(changed) >= 4 * depth
    # ... and the outputs did not: exact in real arithmetic, FP32 rounding here. 1e-5 relative is ~100x the
    # FP32 summation noise of this 2-block model and 100x below what one unscaled channel gives (1e-3+)
    x = np.stack([preprocess(p) for p in photos[:3]])
    for a, b in zip(_run(before, x), _run(after, x)):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max() + 1e-6


def test_a_wrong_fold_is_seen(small_onnx, calib, photos):
    """The same check fails when one LayerNorm's fold is left out: what the test above would miss if
    the outputs it compares did not depend on the fold."""
    from vitrt.preprocess import preprocess

    before = onnx.load(str(small_onnx))
    after = onnx.load(str(small_onnx))
    migrate(after, calib, alpha=0.5)
    first = lambda m: next(n for n in m.graph.node if n.op_type == "LayerNormalization")  # noqa: E731
    original = {i.name: i for i in before.graph.initializer}[first(before).input[1]]
    for i in after.graph.initializer:
        if i.name == first(after).input[1]:
            i.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(original), i.name))  # undo that fold only
    x = np.stack([preprocess(p) for p in photos[:3]])
    a, b = _run(before, x)[1], _run(after, x)[1]
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()


def test_linear_layers_are_named_by_shape(small_onnx):
    layers = linear_layers(onnx.load(str(small_onnx)))
    assert [x["kind"] for x in layers] == list(KINDS) * SMALL_KWARGS["depth"]
    assert [x["block"] for x in layers] == [b for b in range(SMALL_KWARGS["depth"]) for _ in KINDS]


def test_the_smooth_recipe_migrates_before_calibration(small_build, tmp_path):
    """QUANT_RECIPE=smooth: the build runs the migration and records it (docs/precision.md has when it
    helps: trained weights with outlier channels)."""
    import shutil

    from conftest import build_opts
    from export.build import build
    from vitrt.metadata import Metadata

    fp32 = small_build[0]["fp32"]
    for name in (fp32.name, fp32.name + ".parity.json", "m.reference.npz"):
        shutil.copy(fp32.with_name(name), tmp_path / name)
    path = build(build_opts(tmp_path, precision="int8", calib_dir="builtin", plan="no", quant_recipe="smooth"),
                 log=lambda m: None)["int8"]
    smooth = Metadata.from_onnx(path).data["precision_pass"]["smoothquant"]
    assert smooth["alpha"] == 0.5 and smooth["migrated"] == {k: SMALL_KWARGS["depth"] for k in KINDS}
