"""Metadata: the dependency-free ONNX metadata reader and the Metadata checks."""

from __future__ import annotations

import json

import pytest

from vitrt.errors import ArtifactError, MetadataError
from vitrt.metadata import Metadata, sha256_file
from vitrt.onnx_meta import read_metadata_props


def _tiny_onnx(path, props: dict[str, str]):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, producer_name="test", doc_string="d" * 300)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path


def test_reader_equals_onnx(tmp_path, small_onnx):
    import onnx

    props = {"a": "1", "vitrt": json.dumps({"x": "é" * 200}), "empty": ""}
    path = _tiny_onnx(tmp_path / "t.onnx", props)
    assert read_metadata_props(path) == props
    model = onnx.load(small_onnx, load_external_data=False)
    assert read_metadata_props(small_onnx) == {p.key: p.value for p in model.metadata_props}


def test_reader_rejects_garbage_and_truncation(tmp_path, small_onnx):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(small_onnx.read_bytes()[:-1000])
    with pytest.raises(ArtifactError, match="ends in the middle"):
        read_metadata_props(cut)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ArtifactError):
        read_metadata_props(junk)


def test_metadata_validation(small_onnx):
    meta = Metadata.from_onnx(small_onnx)
    assert meta.input_name == "image" and meta.input_dtype == "uint8" and meta.item_shape == (384, 384, 3)
    assert sorted(meta.output_names) == ["embedding", "logits"] and meta.num_classes == 1000
    assert meta.data["weights"]["source"] == "random" and meta.precision == "fp32"
    bad = dict(meta.data)
    del bad["input"]
    with pytest.raises(MetadataError, match=r"lacks \['input'\].*make engine"):
        Metadata(bad)
    with pytest.raises(MetadataError, match="format 99; expected format 1"):
        Metadata({**meta.data, "format": 99})
    with pytest.raises(MetadataError, match="expected a JSON object"):
        Metadata([1, 2])


def test_class_names_are_optional_and_one_per_class(small_onnx, tmp_path):
    """``class_names`` is an optional key of format 1: absent (artifacts before it) the names are
    ImageNet's for 1000 classes; present, one string per class; anything else is refused."""
    meta = Metadata.from_onnx(small_onnx)
    assert meta.class_names is None and meta.labels[281] == "tabby, tabby cat"
    named = Metadata({**meta.data, "class_names": [f"c{i}" for i in range(1000)]})
    assert named.labels[281] == "c281"
    for bad in ([f"c{i}" for i in range(999)], "c0,c1", [1] * 1000):
        with pytest.raises(MetadataError, match="class_names .*expected null or a list of 1000 strings"):
            Metadata({**meta.data, "class_names": bad})


def test_rewriting_the_metadata_keeps_the_graph_byte_for_byte(small_onnx, tmp_path):
    """export.onnx_export.rewrite_metadata (renaming classes) copies every other top-level field as it is:
    the file read back by onnx has the same graph, and the new metadata."""
    import shutil

    import onnx

    from export.onnx_export import rewrite_metadata

    path = tmp_path / "m.onnx"
    shutil.copy(small_onnx, path)
    meta = Metadata.from_onnx(path).data
    rewrite_metadata(path, {**meta, "class_names": [f"c{i}" for i in range(1000)]})
    before, after = onnx.load(small_onnx), onnx.load(path)
    assert before.graph.SerializeToString() == after.graph.SerializeToString()
    assert [o.version for o in before.opset_import] == [o.version for o in after.opset_import]
    assert Metadata.from_onnx(path).labels[3] == "c3" and len(after.metadata_props) == len(before.metadata_props)
    with pytest.raises(MetadataError):  # invalid metadata is refused before anything is written
        rewrite_metadata(path, {**meta, "class_names": ["too few"]})
    assert Metadata.from_onnx(path).labels[3] == "c3" and not list(tmp_path.glob(".*tmp*"))


def test_sidecar_json_errors(tmp_path):
    with pytest.raises(MetadataError, match="is missing; expected it beside the artifact"):
        Metadata.from_json_file(tmp_path / "x.plan.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MetadataError, match="not valid JSON"):
        Metadata.from_json_file(tmp_path / "bad.json")


def test_sha256(tmp_path):
    import hashlib

    p = tmp_path / "f"
    p.write_bytes(b"abc" * 5_000_000)
    assert sha256_file(p) == hashlib.sha256(b"abc" * 5_000_000).hexdigest()
