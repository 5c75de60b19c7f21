"""ONNX Runtime's CPU QuantizeLinear truncates FP16 inputs: the build's gate measures around it.

ONNX's QuantizeLinear rounds ``x / scale`` to the nearest integer, ties to even. The CPU provider of
ONNX Runtime 1.24 (the version ModelOpt 0.47 pins in the build venv) converts an FP16 ``x / scale``
with a plain cast, which truncates toward zero: half of all values land one step off, always toward
zero (microsoft/onnxruntime#18576 and #22741; fixed by PR #32452, in 1.32 here). TensorRT rounds to
nearest even. A TensorRT int8/fp8 recipe with FP16 around its Q/DQ (the only fast one on a GPU) then
measured photos cosine 0.62 on the real-weights model under ORT 1.24, against 0.99 with correct rounding:
the runtime's error, not the recipe's (docs/precision.md, "INT8 and FP8 on real weights").

:func:`truncates` probes the installed ONNX Runtime with one QuantizeLinear; where it truncates,
:func:`evaluation_copy` gives the gate a copy of the graph in which every FP16-input QuantizeLinear
reads ``Cast(x, float32)`` with its scale as float32: the same integers TensorRT computes (x and the
scale are exact in FP32; the division is then correctly rounded before round-to-even). The published
artifact is never changed: only what the gate runs on ONNX Runtime is, and its report says so.
"""

from __future__ import annotations

import functools

import numpy as np

ISSUE = "microsoft/onnxruntime#18576 (fixed by PR #32452)"


@functools.lru_cache(maxsize=1)
def truncates() -> bool:
    """True when the installed ONNX Runtime's CPU QuantizeLinear truncates FP16 input (0.75 -> 0)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [2])],
        [numpy_helper.from_array(np.array(1.0, np.float16), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": np.array([0.75, -0.75], np.float16)})[0]
    return got.tolist() != [1, -1]


def fp16_quantizers(model) -> list:
    """The QuantizeLinear nodes whose scale is FP16 (ModelOpt's FP16 recipes: FP16 x, FP16 scale)."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in inits
            and inits[n.input[1]].data_type == TensorProto.FLOAT16]


def evaluation_copy(model) -> tuple[object, int]:
    """(a copy of ``model`` whose FP16 QuantizeLinears compute in FP32, how many were changed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    nodes = fp16_quantizers(out)
    for i, q in enumerate(nodes):
        scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32)
        s_name, x_name = f"{q.input[1]}__fp32_eval{i}", f"{q.input[0]}__fp32_eval{i}"
        out.graph.initializer.append(numpy_helper.from_array(scale, s_name))
        cast = helper.make_node("Cast", [q.input[0]], [x_name], to=TensorProto.FLOAT, name=f"{q.name}__fp32_eval")
        out.graph.node.insert(list(out.graph.node).index(q), cast)
        q.input[0], q.input[1] = x_name, s_name
    import json

    for prop in out.metadata_props:  # the runtime then knows this copy computes its quantizers in FP32
        if prop.key == "vitrt":
            data = json.loads(prop.value)
            data.setdefault("precision_pass", {})["evaluation_copy"] = "export/ort_fp16_q.py"
            prop.value = json.dumps(data)
    return out, len(nodes)
