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


def _run(model, opts, x, optimized=None):
    if optimized:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _weight_type(path) -> int:
    """The element type of the MatMul's weight after ONNX Runtime's optimizer (3: int8, 2: uint8)."""
    import onnx

    return next(i.data_type for i in onnx.load(str(path)).graph.initializer if i.name.startswith("w_q"))


def test_int8_products_are_exact_on_every_cpu(tmp_path):
    """vitrt's session options give the exact sum where the CPU's u8 x s8 kernel would saturate (AVX2
    alone: vitrt.cpu.int8_saturates), and leave ONNX Runtime's kernels alone elsewhere. Where it saturates,
    ORT's defaults cut the sum to about half (32.38 of 64 under an emulated AVX2 CPU: docs/precision.md);
    elsewhere the exact u8 x u8 mode is not asked for, since ORT 1.32 would then rewrite the weights to u8
    on a VNNI CPU too (slower kernels; seen in its optimized graph). The tolerance is float32 rounding of a
    64-term sum."""
    from vitrt.backends.onnxruntime import X64_QUANT_PRECISION, session_options
    from vitrt.cpu import int8_saturates, read_cpuinfo

    model, x = _saturating_matmul(), np.ones((8, K), np.float32)
    saturates = int8_saturates(read_cpuinfo())
    where = f"this CPU: {read_cpuinfo().isa}, u8 x s8 saturates: {saturates}"
    np.testing.assert_allclose(_run(model, session_options(ort, "int8-cpu"), x, tmp_path / "ours.onnx"), K,
                               rtol=1e-5, err_msg=where)
    # the exact mode forced on gives the exact sum on every CPU
    np.testing.assert_allclose(_run(model, session_options(ort, "int8-cpu", saturates=True), x), K, rtol=1e-5)
    plain = ort.SessionOptions()
    plain.log_severity_level = 3
    default = _run(model, plain, x)
    if saturates:
        assert session_options(ort, "int8-cpu").get_session_config_entry(X64_QUANT_PRECISION) == "1"
        assert float(default.max()) < 0.6 * K, (default, where)  # the saturation this option exists for
    else:
        np.testing.assert_allclose(default, K, rtol=1e-5, err_msg=where)
        with pytest.raises(RuntimeError, match="does not have configuration"):
            session_options(ort, "int8-cpu").get_session_config_entry(X64_QUANT_PRECISION)
        assert _weight_type(tmp_path / "ours.onnx") == 3, where  # int8 weights: the VNNI/AMX kernels stay


def test_a_callers_session_config_wins_over_vitrts():
    from vitrt.backends.onnxruntime import X64_QUANT_PRECISION, session_options

    opts = session_options(ort, "int8-cpu", session_config={X64_QUANT_PRECISION: "0"}, saturates=True)
    assert opts.get_session_config_entry(X64_QUANT_PRECISION) == "0"
    assert session_options(ort, "int8-cpu", saturates=True).get_session_config_entry(X64_QUANT_PRECISION) == "1"
    assert session_options(ort, "fp8").get_session_config_entry("session.disable_quant_qdq") == "1"
