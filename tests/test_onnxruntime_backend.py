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
    """vitrt's session options give the exact sum where this ONNX Runtime's u8 x s8 kernel saturates (on a
    CPU without VNNI or AMX, AVX2 alone), and leave ORT's kernels alone elsewhere. Where it saturates, ORT's
    defaults cut the sum to about half (32.38 of 64 under an emulated AVX2 CPU: docs/precision.md);
    elsewhere the exact u8 x u8 mode is not asked for, since ORT 1.32 would then rewrite the weights to u8
    on a VNNI CPU too (slower kernels; the next test). vitrt's probe must say which case this is. The
    tolerance is float32 rounding of a 64-term sum."""
    from vitrt.backends.onnxruntime import X64_QUANT_PRECISION, _saturates_here, session_options
    from vitrt.cpu import int8_saturates, read_cpuinfo

    model, x = _saturating_matmul(), np.ones((8, K), np.float32)
    plain = ort.SessionOptions()
    plain.log_severity_level = 3
    default = _run(model, plain, x)
    saturates = float(default.max()) < 0.6 * K  # what ORT's own kernel does here
    where = (f"this CPU: {read_cpuinfo().isa} (/proc/cpuinfo: saturates {int8_saturates(read_cpuinfo())}), "
             f"ORT {ort.__version__}'s u8 x s8 kernel saturates: {saturates}")
    assert _saturates_here() is saturates, where
    np.testing.assert_allclose(_run(model, session_options(ort, "int8-cpu"), x, tmp_path / "ours.onnx"), K,
                               rtol=1e-5, err_msg=where)
    # the exact mode forced on gives the exact sum on every CPU
    np.testing.assert_allclose(_run(model, session_options(ort, "int8-cpu", saturates=True), x), K, rtol=1e-5)
    if saturates:
        assert session_options(ort, "int8-cpu").get_session_config_entry(X64_QUANT_PRECISION) == "1"
    else:
        np.testing.assert_allclose(default, K, rtol=1e-5, err_msg=where)
        with pytest.raises(RuntimeError, match="does not have configuration"):
            session_options(ort, "int8-cpu").get_session_config_entry(X64_QUANT_PRECISION)
        assert _weight_type(tmp_path / "ours.onnx") == 3, where  # int8 weights: the VNNI/AMX kernels stay


def test_onnx_runtime_1_32_keeps_the_int8_weights_where_nothing_saturates(tmp_path):
    """In the serving venv (ONNX Runtime 1.32, what `vitrt[cpu]` installs; the build venv's 1.24 never
    rewrites): asked for the exact mode, 1.32 turns the s8 weights into u8 even on a VNNI CPU, so vitrt
    asks only where its probe saw saturation, and the weights stay int8 elsewhere."""
    import subprocess

    from benchmarks.serve_process import serve_python

    python = serve_python()
    if python is None:
        pytest.skip("no serving venv (make test sets VITRT_SERVE_PYTHON)")
    model = tmp_path / "m.onnx"
    model.write_bytes(_saturating_matmul())
    script = (
        "import sys, onnxruntime as ort\n"
        "from vitrt.backends.onnxruntime import _saturates_here, session_options\n"
        "for name, kw in (('ours', {}), ('forced', {'saturates': True})):\n"
        "    o = session_options(ort, 'int8-cpu', **kw)\n"
        "    o.optimized_model_filepath = sys.argv[2] + '/' + name + '.onnx'\n"
        "    ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n"
        "print(ort.__version__, _saturates_here())\n")
    out = subprocess.run([str(python), "-c", script, str(model), str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    version, saturates = out.stdout.split()
    if tuple(int(v) for v in version.split(".")[:2]) < (1, 32):
        pytest.skip(f"the serving venv has ONNX Runtime {version}; this is about 1.32's rewrite")
    assert _weight_type(tmp_path / "forced.onnx") == 2, version  # the rewrite the mode makes
    assert _weight_type(tmp_path / "ours.onnx") == (2 if saturates == "True" else 3), (version, saturates)


def test_the_probe_is_the_graph_it_says():
    """vitrt's embedded probe (vitrt/backends/onnxruntime.py PROBE): x [1, 2] through u8 Q/DQ (1/255) into
    a MatMul with s8 127s (1/127), opset 13."""
    import base64

    import onnx
    from onnx import numpy_helper

    from vitrt.backends.onnxruntime import PROBE

    model = onnx.load_from_string(base64.b64decode(PROBE))
    onnx.checker.check_model(model)
    g = model.graph
    assert [n.op_type for n in g.node] == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul"]
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    assert inits["w_q"].dtype == np.int8 and inits["w_q"].tolist() == [[127], [127]]
    assert inits["x_z"].dtype == np.uint8 and int(inits["x_z"]) == 0 and int(inits["w_z"]) == 0
    assert np.isclose(inits["x_s"], 1 / 255) and np.isclose(inits["w_s"], 1 / 127)
    assert model.opset_import[0].version == 13
    plain = ort.SessionOptions()
    plain.log_severity_level = 3
    exact = _run(base64.b64decode(PROBE), plain, np.ones((1, 2), np.float32))  # shape [1, 1]
    assert exact.shape == (1, 1)


def test_a_callers_session_config_wins_over_vitrts():
    from vitrt.backends.onnxruntime import X64_QUANT_PRECISION, session_options

    opts = session_options(ort, "int8-cpu", session_config={X64_QUANT_PRECISION: "0"}, saturates=True)
    assert opts.get_session_config_entry(X64_QUANT_PRECISION) == "0"
    assert session_options(ort, "int8-cpu", saturates=True).get_session_config_entry(X64_QUANT_PRECISION) == "1"
    assert session_options(ort, "fp8").get_session_config_entry("session.disable_quant_qdq") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # no u8 x s8 in an fp32 graph
        session_options(ort, "fp32").get_session_config_entry(X64_QUANT_PRECISION)
