"""vitrt.Engine on ONNX Runtime (CPU) with the small ViT artifact."""

from __future__ import annotations

import numpy as np
import pytest

import vitrt
from vitrt.engine import softmax
from vitrt.labels import imagenet_labels
from vitrt.errors import ArtifactError, BackendError, InputError, MetadataError


@pytest.fixture(scope="module")
def engine(small_onnx):
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"]) as e:
        yield e


def test_predict_one_and_many(engine, photos):
    one = engine.predict(photos[0])
    assert isinstance(one, list) and len(one) == 5
    assert all(isinstance(p, vitrt.Prediction) for p in one)
    probs = [p.prob for p in one]
    assert probs == sorted(probs, reverse=True)
    assert one[0].label == imagenet_labels()[one[0].index]
    many = engine.predict(photos[:3], topk=3)
    assert len(many) == 3 and all(len(r) == 3 for r in many)
    assert engine.predict((p for p in photos[:3]), topk=3) == many  # a generator is many images, not one
    assert engine.embed(iter(photos[:2])).shape == (2, engine.metadata.data["model"]["num_features"])
    assert many[0][0].index == one[0].index and many[0][0].prob == pytest.approx(one[0].prob, rel=1e-5)


def test_predict_probabilities_are_softmax_of_logits(engine, photos):
    batch = np.stack([engine.preprocess(p) for p in photos[:2]])
    logits = engine.infer(batch)["logits"]
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)
    preds = engine.predict(photos[:2], topk=1000)
    for row, p in zip(preds, probs):
        assert [x.index for x in row[:5]] == list(np.argsort(-p, kind="stable")[:5])
        assert row[0].prob == pytest.approx(p.max(), rel=1e-12)


def test_embed_shapes_and_dtype(engine, photos):
    e1 = engine.embed(photos[0])
    assert e1.shape == (64,) and e1.dtype == np.float32  # the small ViT's width; 768 for ViT-B
    en = engine.embed(photos[:3])
    assert en.shape == (3, 64)
    np.testing.assert_allclose(en[0], e1, rtol=1e-5, atol=1e-6)


def test_image_types_agree(engine, photos):
    from PIL import Image

    path = photos[1]
    arr = np.asarray(Image.open(path).convert("RGB"))
    outs = [engine.embed(x) for x in (path, str(path), path.read_bytes(), Image.open(path), arr)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    batch4d = np.stack([engine.preprocess(p) for p in photos[:2]])
    assert len(engine.predict(batch4d)) == 2  # a 4-D uint8 array is a list of images


def test_batches_larger_than_max_are_split_in_order(engine):
    """The artifact allows 4 at once; 11 images go in 3 runs and come back in input order."""
    from export.images import synthetic_batch

    assert engine.metadata.max_batch == 4
    batch = synthetic_batch(11, seed=3)
    calls = []
    run = engine.backend.run
    engine.backend.run = lambda feed: calls.append(len(feed["image"])) or run(feed)
    try:
        out = engine.infer(batch)
    finally:
        engine.backend.run = run
    assert calls == [4, 4, 3]
    singles = np.concatenate([engine.infer(batch[i:i + 1])["logits"] for i in range(11)])
    # per-image results do not depend on batch composition beyond float32 summation noise
    np.testing.assert_allclose(out["logits"], singles, rtol=1e-5, atol=1e-6)
    assert set(out) == {"logits", "embedding"} and out["embedding"].shape == (11, 64)


@pytest.mark.parametrize("batch, match", [
    (np.zeros((1, 384, 384, 3), np.float32), "dtype float32; expected uint8 NHWC"),
    (np.zeros((384, 384, 3), np.uint8), r"shape \(384, 384, 3\); expected \[N, 384, 384, 3\]"),
    (np.zeros((1, 224, 224, 3), np.uint8), r"shape \(1, 224, 224, 3\); expected \[N, 384, 384, 3\]"),
    (np.zeros((1, 3, 384, 384), np.uint8), r"expected \[N, 384, 384, 3\]"),
    (np.zeros((0, 384, 384, 3), np.uint8), "batch is empty"),
    ([[1, 2]], "batch is a list; expected a numpy array"),
])
def test_infer_rejects_bad_batches(engine, batch, match):
    with pytest.raises(InputError, match=match):
        engine.infer(batch)


@pytest.mark.parametrize("topk", [0, -1, 1001, 2.5, True, "5"])
def test_bad_topk(engine, photos, topk):
    with pytest.raises(InputError, match="topk="):
        engine.predict(photos[0], topk=topk)


def test_empty_list(engine):
    with pytest.raises(InputError, match="empty list of images"):
        engine.predict([])


def test_nchw_variant_agrees_with_uint8(small_onnx, small_onnx_nchw, photos):
    with vitrt.Engine(small_onnx) as a, vitrt.Engine(small_onnx_nchw) as b:
        assert b.metadata.input_layout == "NCHW" and b.metadata.item_shape == (3, 384, 384)
        ea, eb = a.embed(photos[:3]), b.embed(photos[:3])
        # same math, normalization in numpy vs in the graph: float32 rounding only
        np.testing.assert_allclose(ea, eb, rtol=1e-4, atol=1e-5)
        assert [p.index for p in a.predict(photos[0])] == [p.index for p in b.predict(photos[0])]
        with pytest.raises(InputError, match="dtype uint8; expected float32 NCHW"):
            b.infer(np.zeros((1, 3, 384, 384), np.uint8))
        # the README's raw path works on both layouts: preprocess() gives crops, infer() takes them
        raw_a, raw_b = a.infer(a.preprocess(photos[0])[None]), b.infer(b.preprocess(photos[0])[None])
        np.testing.assert_array_equal(raw_b["embedding"], eb[:1])
        np.testing.assert_allclose(raw_a["embedding"], raw_b["embedding"], rtol=1e-4, atol=1e-5)


def test_close_and_context_manager(small_onnx, photos):
    with vitrt.Engine(small_onnx) as e:
        e.predict(photos[0])
    with pytest.raises(BackendError, match="closed"):
        e.predict(photos[0])
    e.close()  # twice is fine


def test_missing_and_wrong_artifacts(tmp_path, small_onnx):
    with pytest.raises(ArtifactError, match="does not exist; expected a .onnx or .plan"):
        vitrt.Engine(tmp_path / "nope.onnx")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="suffix '.pt'; expected .onnx or .plan"):
        vitrt.Engine(tmp_path / "model.pt")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xd8\xff\xe0 this is a jpeg, not onnx" * 10)
    with pytest.raises(ArtifactError):
        vitrt.Engine(garbage)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(small_onnx.read_bytes()[:50_000])
    with pytest.raises(ArtifactError, match="ends in the middle|no vitrt metadata"):
        vitrt.Engine(cut)


def test_onnx_without_vitrt_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    onnx.save(model, tmp_path / "plain.onnx")
    with pytest.raises(MetadataError, match="no vitrt metadata.*expected an ONNX file exported by vitrt"):
        vitrt.Engine(tmp_path / "plain.onnx")
