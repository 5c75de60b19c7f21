"""int8-cpu's quantization, run by export/precision.py in a fresh interpreter (ModelOpt patches ONNX
Runtime's quantizer when it is imported; this process never imports ModelOpt).

    python -m export.ort_quantize SRC.onnx OUT.onnx CALIB.npy INFO.json '{"op_types": null, "fuse": true, ...}'

ONNX Runtime's own static quantization (QDQ) after its pre-processing pass and, with ``fuse``, its
transformer fusions (GELU -> BiasGelu; LayerNormalization is one op already). Every MatMul is
quantized, the attention ones too, whose Q/DQ export/cpu_attention.py then rewrites into the layout
OpenVINO runs as one int8 attention kernel (ONNX Runtime's own layout for them, with Q/DQ on Q·Kᵀ's
output before the softmax, had dropped the small test ViT's photo cosine from 0.9997 to 0.67). Then
the MLP's GELU reads its MatMul's float output (:func:`float_into_gelu`) and the graph outputs are
the float values (:func:`float_outputs`).
INFO.json receives what was done.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

#: What ONNX Runtime's static quantizer is told (docs/precision.md has the measurements): QDQ format,
#: MatMul and Gemm only (every op type: cosine 0.63), per-channel symmetric int8 weights, asymmetric
#: uint8 activations (the u8s8 kernels of its CPU provider), MinMax calibration.
CPU_QUANT = {"op_types": ["MatMul", "Gemm"], "per_channel": True, "activation": "QUInt8", "weight": "QInt8",
             "calibration": "MinMax"}


def quantize(src: Path, out: Path, calib: np.ndarray, op_types: list[str] | None = None, fuse: bool = True,
             attention: bool = True, activation_symmetric: bool = False, exclude: list[str] | None = None) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .precision import _ProgressReader

    work = out.parent
    pre = work / "pre.onnx"
    quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
    fused = None
    if fuse:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("vit")
        options.enable_attention = False  # timm's exportable attention does not match ORT's patterns
        optimized = optimize_model(os.fspath(pre), model_type="vit", num_heads=0, hidden_size=0,
                                   optimization_options=options, opt_level=0)
        fused = dict(Counter(n.op_type for n in optimized.model.graph.node
                             if n.op_type in ("BiasGelu", "Gelu", "FastGelu", "SkipLayerNormalization")))
        pre = work / "fused.onnx"
        optimized.save_model_to_file(os.fspath(pre))
    q = CPU_QUANT
    excluded = list(exclude or [])
    if not attention:
        from .cpu_attention import attention_matmuls

        excluded += [n.name for n in attention_matmuls(onnx.load(os.fspath(pre)).graph)]
    quantize_static(os.fspath(pre), os.fspath(out), _ProgressReader(calib, "image", "calibrating int8-cpu (MinMax)"),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types or q["op_types"],
                    per_channel=q["per_channel"], activation_type=getattr(QuantType, q["activation"]),
                    weight_type=getattr(QuantType, q["weight"]),
                    calibrate_method=getattr(CalibrationMethod, q["calibration"]), nodes_to_exclude=excluded or None,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": activation_symmetric})
    from .cpu_attention import rewrite

    model = onnx.load(os.fspath(out))
    attention = rewrite(model)
    gelu = float_into_gelu(model)
    outputs = float_outputs(model)
    unused = drop_unused_initializers(model.graph)
    onnx.save(model, os.fspath(out))
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", **q,
            "op_types": op_types or q["op_types"], "pre_process": "quant_pre_process", "fusions": fused,
            "attention": {"layout": "export/cpu_attention.py", **attention}, "float_into_gelu": gelu,
            "float_outputs": outputs, "unused_initializers_dropped": unused}


def float_into_gelu(model) -> int:
    """Each MLP's first MatMul feeds its GELU directly, without the Q/DQ pair the quantizer put on the
    MatMul's output. OpenVINO then runs the bias, the GELU and the next layer's input quantization as
    post-ops of the int8 FullyConnected instead of a separate dequantize-GELU-quantize pass over
    577 x 3072 values per block (faster on OpenVINO and ONNX Runtime alike: docs/benchmarks.md, "CPU
    peers"); one rounding fewer, too. Returns how many pairs went."""
    from .cpu_attention import _index

    graph = model.graph
    producer, consumers = _index(graph)
    dropped = 0
    for gelu in [n for n in graph.node if n.op_type in ("BiasGelu", "Gelu", "FastGelu")]:
        dq = producer.get(gelu.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or getattr(producer.get(q.input[0]), "op_type", None) != "MatMul":
            continue
        if len(consumers[q.output[0]]) != 1 or len(consumers[dq.output[0]]) != 1:
            continue  # the quantized value feeds something else too: leave it
        gelu.input[0] = q.input[0]
        graph.node.remove(dq)
        graph.node.remove(q)
        dropped += 1
    return dropped


def drop_unused_initializers(graph) -> int:
    """Remove initializers no node reads (the scales and zero points of the Q/DQ pairs removed above:
    ONNX Runtime warns about each at load). Returns how many."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    stale = [i for i in graph.initializer if i.name not in used]
    for i in stale:
        graph.initializer.remove(i)
    return len(stale)


def float_outputs(model) -> list[str]:
    """The graph's outputs as the float values their ops computed, not through a Q/DQ pair.

    ONNX Runtime's quantizer quantizes a tensor that feeds a quantized op, graph outputs included: the
    embedding (it feeds the head's Gemm) and the logits came out rounded to 256 levels. Here each output
    made by DequantizeLinear(QuantizeLinear(x)) takes x's name; the pair stays for its other consumers
    (the head keeps its int8 input) and goes where it fed nothing else. Returns the outputs changed."""
    from .cpu_attention import _index

    graph = model.graph
    producer, consumers = _index(graph)
    changed = []
    for out in graph.output:
        dq = producer.get(out.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = producer.get(q.input[0])
        if source is None:  # a graph input passed through: leave it
            continue
        inner, slot = q.input[0], list(source.output).index(q.input[0])
        dq.output[0] = out.name + "_dequantized"
        for user in consumers.get(out.name, []):
            user.input[:] = [dq.output[0] if i == out.name else i for i in user.input]
        for user in consumers.get(inner, []):
            user.input[:] = [out.name if i == inner else i for i in user.input]
        source.output[slot] = out.name
        if not consumers.get(out.name) and len(consumers.get(q.output[0], [])) == 1:
            graph.node.remove(dq)
            graph.node.remove(q)
        changed.append(out.name)
    return changed


def main(argv: list[str] | None = None) -> int:
    src, out, calib, info, opts = argv if argv is not None else sys.argv[1:]
    done = quantize(Path(src), Path(out), np.load(calib), **json.loads(opts))
    Path(info).write_text(json.dumps(done))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
