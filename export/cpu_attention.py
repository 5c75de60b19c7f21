"""int8-cpu's attention in int8: the Q/DQ layout OpenVINO's CPU plugin runs as one int8 attention kernel.

ONNX Runtime's quantizer, told to quantize the attention MatMuls (Q·Kᵀ and softmax·V, both inputs
activations), puts asymmetric uint8 Q/DQ on every input *and* on each MatMul's output. Measured on the
full ViT-B/16-384 (docs/benchmarks.md, "CPU peers"), OpenVINO then runs attention as separate FP32
MatMul, Softmax and FakeQuantize nodes: slower than leaving attention in FP32. This pass rewrites that
graph, in place, into the layout NNCF gives OpenVINO and OpenVINO fuses into one int8 attention
subgraph (its MHA tokenization):

1. no Q/DQ on an attention MatMul's output (the one between Q·Kᵀ and Softmax also cost accuracy:
   logits quantized before the softmax);
2. K's Q/DQ before its Transpose, not between Transpose and MatMul (per-tensor Q/DQ commutes with a
   transpose, so the values are the same);
3. Q, K and V symmetric int8, zero point 0, scale = max(|min|, |max|) / 127 from the same MinMax
   calibration range;
4. the softmax output unsigned, zero point 0 (its range starts at 0), as ONNX Runtime calibrated it.

Every Linear layer's Q/DQ is left as ONNX Runtime made it. ONNX Runtime runs the result too (its QDQ
MatMul kernels take s8 x s8 and u8 x s8), so one artifact serves both CPU runtimes.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _index(graph):
    producer = {o: n for n in graph.node for o in n.output}
    consumers = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    return producer, consumers


def attention_matmuls(graph) -> list:
    """MatMuls neither of whose inputs comes, through DequantizeLinear/Transpose, from a weight."""
    producer, _ = _index(graph)
    weights = {i.name for i in graph.initializer}

    def from_weight(name):
        node = producer.get(name)
        while node is not None and node.op_type in ("DequantizeLinear", "Transpose"):
            if node.input[0] in weights:
                return True
            node = producer.get(node.input[0])
        return name in weights

    return [n for n in graph.node if n.op_type == "MatMul" and not any(from_weight(i) for i in n.input)]


def _qdq_pair(producer, name):
    """(Q, DQ) when ``name`` is the output of DequantizeLinear(QuantizeLinear(x)), else None."""
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer.get(dq.input[0])
    return (q, dq) if q is not None and q.op_type == "QuantizeLinear" else None


def _quantized_input(producer, name) -> bool:
    node = producer.get(name)
    if node is not None and node.op_type == "Transpose":
        node = producer.get(node.input[0])
    return node is not None and node.op_type == "DequantizeLinear"


def _toposort(graph):
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    order, rest = [], list(graph.node)
    while rest:
        ready = [n for n in rest if all(i in known for i in n.input)]
        if not ready:
            raise ValueError("the attention rewrite left a cycle or a dangling input")
        for n in ready:
            known.update(n.output)
        order.extend(ready)
        rest = [n for n in rest if n not in ready]
    del graph.node[:]
    graph.node.extend(order)


def rewrite(model) -> dict:
    """Rewrite ``model`` (an ONNX ModelProto from ONNX Runtime's quantizer) as above; returns counts.
    Attention MatMuls the quantizer left in FP32 (``op_types`` without MatMul) are left alone."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer, consumers = _index(graph)
    matmuls = [mm for mm in attention_matmuls(graph) if all(_quantized_input(producer, i) for i in mm.input)]
    dropped = moved = symmetric = 0
    # 1. no Q/DQ on the attention MatMuls' outputs
    for mm in matmuls:
        qs = consumers.get(mm.output[0], [])
        if len(qs) != 1 or qs[0].op_type != "QuantizeLinear":
            continue
        q = qs[0]
        dqs = consumers.get(q.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        for user in consumers.get(dqs[0].output[0], []):
            user.input[:] = [mm.output[0] if i == dqs[0].output[0] else i for i in user.input]
        graph.node.remove(q)
        graph.node.remove(dqs[0])
        dropped += 1
    producer, consumers = _index(graph)
    for mm in matmuls:
        for slot, name in enumerate(mm.input):
            # 2. Transpose -> Q -> DQ -> MatMul becomes Q -> DQ -> Transpose -> MatMul
            node = producer.get(name)
            if node is not None and node.op_type == "DequantizeLinear":
                q = producer.get(node.input[0])
                tr = producer.get(q.input[0]) if q is not None else None
                if tr is not None and tr.op_type == "Transpose" and len(consumers[tr.output[0]]) == 1:
                    q.input[0] = tr.input[0]
                    tr.input[0] = node.output[0]
                    tr.output[0] = node.output[0] + "_transposed"
                    mm.input[slot] = tr.output[0]
                    moved += 1
                    producer, consumers = _index(graph)
            node = producer.get(mm.input[slot])
            if node is not None and node.op_type == "Transpose":
                pair = _qdq_pair(producer, node.input[0])
            else:
                pair = _qdq_pair(producer, mm.input[slot])
            if pair is None:
                raise ValueError(f"attention MatMul {mm.name!r} input {slot}: a DequantizeLinear without its "
                                 "QuantizeLinear; expected ONNX Runtime's quantizer's Q -> DQ pairs")
            q, dq = pair
            source = producer.get(q.input[0])
            scale = float(numpy_helper.to_array(inits[q.input[1]]))
            zero = numpy_helper.to_array(inits[q.input[2]])
            lo, hi = (0.0 - float(zero)) * scale, (255.0 - float(zero)) * scale
            if source is not None and source.op_type == "Softmax":
                # 4. probabilities: uint8 from 0 (ORT's MinMax range includes 0, so zp is 0 already)
                new_scale, new_zero = max(hi, 1e-8) / 255.0, np.array(0, dtype=np.uint8)
            else:
                # 3. Q, K, V: symmetric int8
                new_scale, new_zero = max(abs(lo), abs(hi), 1e-8) / 127.0, np.array(0, dtype=np.int8)
                symmetric += 1
            s_name, z_name = q.input[1] + "_attn", q.input[2] + "_attn"
            graph.initializer.append(numpy_helper.from_array(np.array(new_scale, dtype=np.float32), s_name))
            graph.initializer.append(numpy_helper.from_array(new_zero, z_name))
            inits[s_name], inits[z_name] = graph.initializer[-2], graph.initializer[-1]
            q.input[1], q.input[2], dq.input[1], dq.input[2] = s_name, z_name, s_name, z_name
    _toposort(graph)  # the replaced scales and zero points: export/ort_quantize.py drops what no node reads
    return {"matmuls": len(matmuls), "output_qdq_dropped": dropped, "k_qdq_moved_before_transpose": moved,
            "symmetric_int8_inputs": symmetric}
