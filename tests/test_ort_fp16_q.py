"""export/ort_fp16_q.py: the gate's evaluation copy rounds FP16 QuantizeLinear as ONNX (and TensorRT) do."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export import ort_fp16_q


def _q_model(scale: float = 0.1):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None])],
                              [numpy_helper.from_array(np.array(scale, np.float16), "s"),
                               numpy_helper.from_array(np.array(0, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def _levels(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    scale = np.float32(np.float16(0.1))
    return np.round(sess.run(None, {"x": x})[0].astype(np.float32) / scale).astype(int)


def test_the_evaluation_copy_rounds_to_nearest_even():
    x = np.random.default_rng(0).uniform(-12, 12, 4096).astype(np.float16)
    want = np.clip(np.rint(x.astype(np.float32) / np.float32(np.float16(0.1))), -128, 127).astype(int)
    model = _q_model()
    assert len(ort_fp16_q.fp16_quantizers(model)) == 1
    copy, changed = ort_fp16_q.evaluation_copy(model)
    assert changed == 1 and not ort_fp16_q.fp16_quantizers(copy)
    assert (_levels(copy, x) == want).all()
    plain = _levels(model, x)
    # The probe says whether this ONNX Runtime truncates (1.24, the build venv's) or rounds (1.32 and on):
    # whichever it is, the plain graph behaves as the probe says, on about half the values.
    wrong = float((plain != want).mean())
    if ort_fp16_q.truncates():
        assert 0.4 < wrong < 0.6 and (np.abs(plain) <= np.abs(want)).all(), ort.__version__  # toward zero
    else:
        assert wrong == 0.0, ort.__version__


def test_an_fp32_graph_is_left_alone():
    model = _q_model()
    for i in model.graph.initializer:
        if i.name == "s":
            i.CopyFrom(numpy_helper.from_array(np.array(0.1, np.float32), "s"))
    assert ort_fp16_q.fp16_quantizers(model) == []
    assert ort_fp16_q.evaluation_copy(model)[1] == 0
    onnx.checker.check_model(ort_fp16_q.evaluation_copy(_q_model())[0])


def test_the_runtime_warns_where_onnx_runtime_truncates(caplog):
    """vitrt's ONNX Runtime backend warns when a TensorRT-made int8/fp8 variant (FP16 around its Q/DQ)
    runs on a CPU provider of a release that truncates; not for an evaluation copy, not on 1.32+."""
    import logging
    from types import SimpleNamespace

    from vitrt.backends.onnxruntime import _warn_fp16_quantize

    def meta(**pp):
        return SimpleNamespace(precision="int8", data={"precision_pass": {"high_precision_dtype": "fp16", **pp}})

    caplog.set_level(logging.WARNING, logger="vitrt")
    _warn_fp16_quantize(SimpleNamespace(__version__="1.24.4"), meta(), "CPUExecutionProvider")
    assert "truncates FP16 inputs" in caplog.text and "onnxruntime>=1.32" in caplog.text
    caplog.clear()
    for ort_version, m, provider in (("1.32.0", meta(), "CPUExecutionProvider"),
                                     ("1.24.4", meta(evaluation_copy="export/ort_fp16_q.py"), "CPUExecutionProvider"),
                                     ("1.24.4", meta(), "CUDAExecutionProvider")):
        _warn_fp16_quantize(SimpleNamespace(__version__=ort_version), m, provider)
    assert caplog.text == ""
