"""SmoothQuant-style scale migration on the fp32 ONNX graph, before INT8/FP8 calibration.

A trained ViT's LayerNorm outputs carry a few outlier channels (the real-weights model: one channel
of the fc1 inputs reaches 33-163 where the median channel stays under 8), and one per-tensor
activation scale then spends most of its 8 bits on them. SmoothQuant (Xiao et al., 2023) moves that
range into the weights, per input channel j of a Linear layer ``y = x W``:

    s_j = max|x_j| ** alpha / max|W_j,:| ** (1 - alpha);   x' = x / s,   W' = diag(s) W

which leaves ``y`` unchanged in exact arithmetic. Where the division folds into the op before it,
the graph gains nothing:

- qkv and fc1 read a LayerNormalization: its scale and bias are divided by s (exact);
- proj reads softmax(QKᵀ)·V per head: the value projection's weight columns and bias are divided by s
  (exact: the attention weights mix tokens, not channels);
- fc2 reads GELU(fc1), which does not commute with a scale: an explicit ``Mul(1/s)`` goes after the
  GELU. TensorRT fuses it into fc1's epilogue with the bias, the GELU and the Quantize (pointwise ops
  between a GEMM and a Q fuse: docs/tensorrt.md), so it costs no kernel.

``max|x_j|`` comes from running the graph on the calibration images; the output graph's values differ
from the input's only by FP32 rounding (tests/test_smooth.py checks it on the small ViT). The
quantizer (ModelOpt or ONNX Runtime) then calibrates the migrated graph as it would any other.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .cpu_attention import _index  # (producer of each tensor, its consumers)

#: The migration strength. 0.5 is SmoothQuant's default for most models: it splits the range equally
#: between activation and weight (docs/precision.md has what 0.5 and others gave on real weights).
ALPHA = 0.5
KINDS = ("qkv", "proj", "fc1", "fc2")


def linear_layers(model) -> list[dict]:
    """The Linear MatMuls (a weight initializer as the second input) in graph order, each as
    ``{"node", "weight", "kind", "block"}``; kinds by the weight's shape (C, 3C) qkv, (C, C) proj,
    (C, hidden) fc1, (hidden, C) fc2. The head is a Gemm and is not among them."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def weight(name):  # the initializer behind a MatMul's second input: itself, or through Q/DQ
        for _ in range(2):
            if name in inits:
                return name
            node = producer.get(name)
            if node is None or node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
                return None
            name = node.input[0]
        return name if name in inits else None

    out = []
    for n in graph.node:
        w = weight(n.input[1]) if n.op_type == "MatMul" and len(n.input) > 1 else None
        if w is None or len(inits[w].dims) != 2:
            continue
        rows, cols = inits[w].dims
        kind = "qkv" if cols == 3 * rows else "proj" if cols == rows else "fc1" if cols > rows else "fc2"
        out.append({"node": n, "weight": w, "kind": kind, "direct": w == n.input[1]})
    counts = defaultdict(int)
    for layer in out:
        layer["block"] = counts[layer["kind"]]
        counts[layer["kind"]] += 1
    return out


def channel_max(model, calib: np.ndarray, names: list[str], batch: int = 2) -> dict[str, np.ndarray]:
    """max |x_j| over every token of ``calib`` for each tensor in ``names`` (ONNX Runtime, CPU)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for name in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = model.graph.input[0].name
    out = {n: None for n in names}
    for i in range(0, len(calib), batch):
        for name, value in zip(names, sess.run(names, {feed: calib[i:i + batch]})):
            cmax = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            out[name] = cmax if out[name] is None else np.maximum(out[name], cmax)
    return out


def _value_projection(graph, proj_input: str, producer, inits):
    """The qkv MatMul and bias Add whose value third feeds proj's input through the attention
    (Reshape/Transpose/MatMul(softmax, V)); None where the graph does not have that form."""
    node = producer.get(proj_input)
    while node is not None and node.op_type in ("Reshape", "Transpose"):
        node = producer.get(node.input[0])
    if node is None or node.op_type != "MatMul":
        return None
    node = producer.get(node.input[1])  # V, from the qkv output through Slice/Squeeze/Transpose/Reshape
    while node is not None and node.op_type not in ("Add", "MatMul"):
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Add":
        return None
    bias = next((i for i in node.input if i in inits), None)
    mm = next((producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul"), None)
    if bias is None or mm is None or mm.input[1] not in inits:
        return None
    return mm, bias


def migrate(model, calib: np.ndarray, alpha: float = ALPHA, kinds: tuple[str, ...] = KINDS,
            min_ratio: float = 0.0) -> dict:
    """Migrate ``model`` (fp32 ModelProto, in place) for the Linear layers of ``kinds``; returns what was
    done per kind. A layer whose input is not of the form above is left as it was and counted."""
    from onnx import helper, numpy_helper

    graph = model.graph
    layers = [x for x in linear_layers(model) if x["kind"] in kinds]
    stats = channel_max(model, calib, [x["node"].input[0] for x in layers])
    inits = {i.name: i for i in graph.initializer}
    producer, consumers = _index(graph)
    arr = lambda name: numpy_helper.to_array(inits[name]).astype(np.float64)  # noqa: E731

    def put(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    done, skipped = defaultdict(int), defaultdict(int)
    for layer in layers:
        mm, w_name, kind = layer["node"], layer["weight"], layer["kind"]
        x_name = mm.input[0]
        w = arr(w_name)
        if not layer["direct"] or len(consumers[w_name]) != 1:
            skipped[kind] += 1
            continue
        xmax = np.maximum(stats[x_name], 1e-5)
        if float(xmax.max() / np.median(xmax)) < min_ratio:  # no outlier channel to move: leave the layer
            skipped["no outlier"] = skipped.get("no outlier", 0) + 1
            continue
        wmax = np.maximum(np.abs(w).max(axis=1), 1e-5)
        s = np.clip(xmax ** alpha / wmax ** (1 - alpha), 1e-2, 1e2)
        src = producer.get(x_name)
        if kind in ("qkv", "fc1"):
            if (src is None or src.op_type != "LayerNormalization" or len(consumers[x_name]) != 1
                    or len(src.input) < 3 or src.input[1] not in inits or src.input[2] not in inits):
                skipped[kind] += 1
                continue
            for slot in (1, 2):  # a scale or bias shared with other LayerNorms (equal values deduplicated by
                name = src.input[slot]  # the exporter, as in a random init) gets a copy of its own first
                if len(consumers[name]) > 1:
                    own = f"{name}_{src.name}_smooth"
                    graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), own))
                    inits[own] = graph.initializer[-1]
                    consumers[name].remove(src)
                    consumers[own] = [src]
                    src.input[slot] = own
            put(src.input[1], arr(src.input[1]) / s)
            put(src.input[2], arr(src.input[2]) / s)
        elif kind == "proj":
            found = _value_projection(graph, x_name, producer, inits)
            if found is None:
                skipped[kind] += 1
                continue
            qkv, bias = found
            c = w.shape[0]
            wq, bq = arr(qkv.input[1]), arr(bias)
            wq[:, 2 * c:] /= s[None, :]
            bq[2 * c:] /= s
            put(qkv.input[1], wq)
            put(bias, bq)
        else:  # fc2: an explicit Mul after the GELU
            inv = f"{w_name}_smooth_inv"
            graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
            out = f"{x_name}_smoothed"
            graph.node.insert(list(graph.node).index(mm), helper.make_node("Mul", [x_name, inv], [out],
                                                                           name=f"{mm.name}_smooth"))
            mm.input[0] = out
        put(w_name, w * s[:, None])
        done[kind] += 1
    return {"method": "smoothquant", "alpha": alpha, "migrated": dict(done), "skipped": dict(skipped)}
