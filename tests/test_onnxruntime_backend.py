"""vitrt/backends/onnxruntime.py: the session options vitrt runs an artifact with."""

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

#: A Q/DQ MatMul whose u8 x s8 products saturate VPMADDUBSW: every activation quantizes to u8 255 and
#: every weight to s8 127, so each pair of products sums to 64770 > 32767 in a 16-bit lane. Exact int8
#: math gives K * 1.0 (x = 1.0 at scale 1/255, w = 1.0 at scale 1/127); a saturating kernel about half.
K = 64


def _saturating_matmul():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((K, 4), 127, np.int8), "w_q")
    inits = [w, numpy_helper.from_array(np.array(1 / 127, np.float32), "w_s"),
             numpy_helper.from_array(np.array(0, np.int8), "w_z"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "x_s"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"]),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"])]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()


def test_int8_products_are_exact_on_every_cpu():
    """vitrt's session options give the exact sum where the CPU's u8 x s8 kernel would saturate. Without
    them (ORT's defaults) the sum is cut to about half on a CPU without VNNI (AVX2 alone: vitrt.cpu
    .int8_saturates); with VNNI both are exact, so there the first assertion holds on the old code too and
    the option's presence is asserted instead. The tolerance is float32 rounding of a 64-term sum."""
    from vitrt.backends.onnxruntime import X64_QUANT_PRECISION, session_options
    from vitrt.cpu import int8_saturates, read_cpuinfo

    model, x = _saturating_matmul(), np.ones((8, K), np.float32)
    opts = session_options(ort, "int8-cpu")
    assert opts.get_session_config_entry(X64_QUANT_PRECISION) == "1"
    ours = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, K, rtol=1e-5)
    plain = ort.SessionOptions()
    plain.log_severity_level = 3
    default = ort.InferenceSession(model, plain, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    if int8_saturates(read_cpuinfo()):
        assert float(default.max()) < 0.6 * K, default  # the saturation this option exists for
    else:
        np.testing.assert_allclose(default, K, rtol=1e-5)


def test_a_callers_session_config_wins_over_vitrts():
    from vitrt.backends.onnxruntime import X64_QUANT_PRECISION, session_options

    opts = session_options(ort, "int8-cpu", session_config={X64_QUANT_PRECISION: "0"})
    assert opts.get_session_config_entry(X64_QUANT_PRECISION) == "0"
    assert session_options(ort, "fp8").get_session_config_entry("session.disable_quant_qdq") == "1"
