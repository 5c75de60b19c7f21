"""A TensorRT plan's time, estimated layer by layer from its ONNX graph (no GPU needed).

No GPU is reachable where vitrt is developed, so whether an int8/fp8 plan beats the fp16 plan is
estimated by TensorRT's rules and a roofline: each kernel takes ``max(FLOPs / peak, bytes / bandwidth)``
at the precision its tensors have in the graph. ``python -m benchmarks.plan_estimate`` prints the
table (docs/tensorrt.md, "Which plan is faster"); the build records each variant's estimate in its
metadata, and ``vitrt.fleet`` ranks an int8/fp8 plan ahead of fp16 only where that estimate is faster.

What a plan runs, per transformer block, by TensorRT's fusion rules for a strongly typed network
(TensorRT's developer guide, "Q/DQ layer placement" and "Fusions"):

- each Linear layer is one GEMM at its input precision (int8/fp8 where a DequantizeLinear feeds it,
  else the weights' float type), with its bias, the residual add (proj, fc2) and fc1's GELU fused in
  the epilogue; a QuantizeLinear after a pointwise op or a normalization fuses into that op's kernel
  (LayerNorm -> Q, GELU -> Q), so the GEMM reads 8-bit data. proj's input is the attention's output:
  its Q is one more pointwise pass (read at the float type, write 8 bits);
- LayerNormalization is one kernel: it reads the residual stream at the graph's float type and writes
  its consumer's input type;
- attention (Q·Kᵀ, Softmax, ·V) in FP16 with no Q/DQ inside is one fused MHA kernel (TensorRT's
  ``_gemm_mha_v2`` / fMHA), which never writes the [tokens x tokens] scores to memory. In FP32 (vitrt
  clears TF32) TensorRT has no fused MHA: two GEMMs on the FP32 CUDA cores and a Softmax, each pass
  reading or writing the scores;
- the patch embedding and the head are GEMMs too (under 1 % of the time; kept for completeness).

Peaks are NVIDIA's dense datasheet numbers (no sparsity). The estimate is a bound, not a measurement:
real kernels reach 60-80 % of peak and int8 kernels somewhat less than fp16 ones, so read the ratios,
and check them with ``benchmarks/gpu_check.sh`` on the GPU (docs/tensorrt.md).
"""

from __future__ import annotations

import dataclasses

#: Dense peaks: tensor-core TFLOPS (TOPS for int8) per precision, FP32 on CUDA cores (no TF32), and
#: DRAM bandwidth in TB/s. H100 SXM5 and L4 datasheets (NVIDIA, 2023).
GPUS = {
    "H100 SXM": {"fp16": 989.4, "fp8": 1978.9, "int8": 1978.9, "fp32": 66.9, "bandwidth": 3.35},
    "L4": {"fp16": 121.0, "fp8": 242.5, "int8": 242.5, "fp32": 30.3, "bandwidth": 0.300},
}
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
LINEAR = ("qkv", "proj", "fc1", "fc2")
#: The batch the fleet rule compares plans at (throughput serving; docs/tensorrt.md).
FLEET_BATCH = 32


@dataclasses.dataclass
class Graph:
    """What the estimate needs of a ViT graph: its sizes and each layer's precision."""

    depth: int
    width: int
    heads: int
    hidden: int
    tokens: int
    patch_k: int  # 3 * patch * patch
    classes: int
    linear: list[dict]  # per block: {"qkv": "int8", "proj": ..., "fc1": ..., "fc2": ...}
    around: str  # the float type of everything else (LayerNorm, residual stream, softmax)
    attention: str  # the attention MatMuls' precision ("fp16", "fp32", or "int8"/"fp8" with Q/DQ on them)


def _elem(dtype: int) -> str:
    from onnx import TensorProto

    return {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
            TensorProto.INT8: "int8", TensorProto.UINT8: "int8", TensorProto.FLOAT8E4M3FN: "fp8"}.get(dtype, "fp32")


def from_onnx(model) -> Graph:
    """The sizes and precisions of ``model`` (an ONNX ModelProto of any vitrt variant)."""
    from .smooth import linear_layers

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def precision(name: str) -> str:
        node = producer.get(name)
        while node is not None and node.op_type in ("Transpose", "Reshape", "Cast") and node.input[0] not in inits:
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear":
            src = node.input[0]
            if src in inits:
                return _elem(inits[src].data_type)
            q = producer.get(src)
            zp = q.input[2] if q is not None and len(q.input) > 2 else None
            return _elem(inits[zp].data_type) if zp in inits else "int8"
        if name in inits:
            return _elem(inits[name].data_type)
        if node is not None and node.op_type == "Transpose" and node.input[0] in inits:
            return _elem(inits[node.input[0]].data_type)
        return "fp32"

    layers = linear_layers(model)
    depth = max(x["block"] for x in layers) + 1
    linear = [{} for _ in range(depth)]
    for x in layers:
        linear[x["block"]][x["kind"]] = precision(x["node"].input[1])
    qkv = inits[layers[0]["weight"]]
    fc1 = next(inits[x["weight"]] for x in layers if x["kind"] == "fc1")
    norm = next(n for n in graph.node if n.op_type == "LayerNormalization")
    around = _elem(inits[norm.input[1]].data_type) if norm.input[1] in inits else "fp32"
    heads = _heads(model)
    conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    patch_k = 768
    if conv is not None and conv.input[1] in inits:
        d = inits[conv.input[1]].dims
        patch_k = int(d[1] * d[2] * d[3])
    head = next((n for n in graph.node if n.op_type == "Gemm"), None)
    classes = int(inits[head.input[1]].dims[0]) if head is not None and head.input[1] in inits else 1000
    shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]  # [N, H, W, 3] or [N, 3, H, W]
    size = (shape[1] if shape[-1] == 3 else shape[2]) if len(shape) == 4 else 0
    side = (size or 384) // int(round((patch_k / 3) ** 0.5))  # 384: the contract's size, where the dim is symbolic
    lin = {id(x["node"]) for x in layers}
    att = [n for n in graph.node if n.op_type == "MatMul" and id(n) not in lin]
    att_prec = precision(att[0].input[0]) if att else around
    if att_prec not in ("int8", "fp8"):
        att_prec = around
    return Graph(depth=depth, width=int(qkv.dims[0]), heads=heads, hidden=int(fc1.dims[1]), tokens=side * side + 1,
                 patch_k=patch_k, classes=classes, linear=linear, around=around, attention=att_prec)


def _heads(model) -> int:
    """The head count: the Reshape of qkv's output to [B, N, 3, heads, head_dim]."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Reshape" and n.input[1] in inits:
            shape = numpy_helper.to_array(inits[n.input[1]]).tolist()
            if len(shape) == 5 and shape[2] == 3:
                return int(shape[3])
    consts = [n for n in model.graph.node if n.op_type == "Constant"]
    for n in consts:
        value = numpy_helper.to_array(n.attribute[0].t).tolist() if n.attribute and n.attribute[0].t.dims else None
        if isinstance(value, list) and len(value) == 5 and value[2] == 3:
            return int(value[3])
    raise ValueError("no [B, N, 3, heads, head_dim] Reshape in the graph; expected timm's ViT attention")


def kernels(g: Graph, batch: int) -> list[dict]:
    """The kernels a plan runs for ``batch`` images: name, FLOPs, bytes, precision of the math."""
    n, c, t, b = batch, g.width, g.tokens, BYTES
    m = n * t
    f = b[g.around]
    out = [{"layer": "patch_embed", "flops": 2 * n * (t - 1) * g.patch_k * c, "precision": g.around,
            "bytes": n * (t - 1) * g.patch_k * f + g.patch_k * c * f + m * c * f}]
    for i, lin in enumerate(g.linear):
        p = {k: lin.get(k, g.around) for k in LINEAR}
        io = {k: (b[p[k]] if p[k] in ("int8", "fp8") else f) for k in LINEAR}  # a GEMM's input bytes

        def gemm(name, k_dim, n_dim, in_bytes, out_bytes, extra_read=0):
            return {"layer": f"blocks.{i}.{name}", "flops": 2 * m * k_dim * n_dim, "precision": p[name],
                    "bytes": m * k_dim * in_bytes + k_dim * n_dim * b[p[name]] + m * n_dim * out_bytes + extra_read}

        out.append({"layer": f"blocks.{i}.norm1", "flops": 0, "precision": g.around, "bytes": m * c * (f + io["qkv"])})
        out.append(gemm("qkv", c, 3 * c, io["qkv"], f))
        scores = n * g.heads * t * t
        att_flops = 2 * 2 * scores * (c // g.heads)
        eight = g.attention in ("int8", "fp8")
        if eight or g.around in ("fp16", "bf16"):
            # 8-bit MHA (Q/DQ on Q, K, V and the probabilities): reads and writes 8-bit tensors, and its
            # output feeds proj's GEMM with no separate quantize pass
            prec = g.attention if eight else g.around
            out.append({"layer": f"blocks.{i}.attention (fused MHA)", "flops": att_flops, "precision": prec,
                        "bytes": 4 * m * c * (1 if eight else f)})
        else:  # FP32: no fused MHA; the scores go through memory: written, read+written by Softmax, read
            out.append({"layer": f"blocks.{i}.attention (unfused FP32: 2 GEMMs + Softmax)", "flops": att_flops,
                        "precision": "fp32", "bytes": 3 * m * c * f + m * c * f + 4 * scores * f})
        if p["proj"] in ("int8", "fp8") and not eight:
            out.append({"layer": f"blocks.{i}.proj input quantize", "flops": 0, "precision": g.around,
                        "bytes": m * c * (f + io["proj"])})
        out.append(gemm("proj", c, c, io["proj"], f, extra_read=m * c * f))  # + the residual read
        out.append({"layer": f"blocks.{i}.norm2", "flops": 0, "precision": g.around, "bytes": m * c * (f + io["fc1"])})
        out.append(gemm("fc1", c, g.hidden, io["fc1"], io["fc2"]))  # bias + GELU (+ Q) in the epilogue
        out.append(gemm("fc2", g.hidden, c, io["fc2"], f, extra_read=m * c * f))
    out.append({"layer": "norm + head", "flops": 2 * n * c * g.classes, "precision": g.around,
                "bytes": m * c * f + c * g.classes * f + n * g.classes * 4})
    return out


def kernel_time(k: dict, gpu: dict) -> float:
    """Seconds: the roofline of one kernel (its math on the tensor cores of its precision; FP32 on the
    CUDA cores)."""
    peak = gpu[k["precision"] if k["precision"] in gpu else "fp16"] * 1e12
    return max(k["flops"] / peak if k["flops"] else 0.0, k["bytes"] / (gpu["bandwidth"] * 1e12))


def estimate(g: Graph, batch: int = FLEET_BATCH, gpus: dict | None = None) -> dict:
    """{gpu: {"ms": time per batch, "images_per_s": ...}} for ``g`` at ``batch``."""
    out = {}
    for name, gpu in (gpus or GPUS).items():
        s = sum(kernel_time(k, gpu) for k in kernels(g, batch))
        out[name] = {"ms": round(s * 1e3, 4), "images_per_s": round(batch / s, 1)}
    return out


def as_fp16(g: Graph) -> Graph:
    """The fp16 plan of the same model: every layer FP16, fused MHA."""
    return dataclasses.replace(g, linear=[{k: "fp16" for k in LINEAR} for _ in g.linear], around="fp16",
                               attention="fp16")


def speedup_vs_fp16(g: Graph, batch: int = FLEET_BATCH) -> dict[str, float]:
    """{gpu: estimated throughput of ``g`` / that of the fp16 plan} at ``batch``."""
    mine, ref = estimate(g, batch), estimate(as_fp16(g), batch)
    return {name: round(ref[name]["ms"] / mine[name]["ms"], 3) for name in mine}


def record(model) -> dict:
    """What the build stores in a variant's metadata (``plan_estimate``): the speedup over the fp16 plan
    at :data:`FLEET_BATCH` per GPU, and the share of the Linear MACs in each precision."""
    g = from_onnx(model)
    macs: dict[str, int] = {}
    sizes = {"qkv": 3 * g.width * g.width, "proj": g.width * g.width, "fc1": g.width * g.hidden, "fc2": g.hidden * g.width}
    for lin in g.linear:
        for k in LINEAR:
            macs[lin.get(k, g.around)] = macs.get(lin.get(k, g.around), 0) + sizes[k]
    total = sum(macs.values())
    return {"batch": FLEET_BATCH, "speedup_vs_fp16": speedup_vs_fp16(g), "around": g.around, "attention": g.attention,
            "linear_mac_share": {p: round(v / total, 4) for p, v in sorted(macs.items())},
            "rule": "export/plan_estimate.py (roofline on NVIDIA's dense peaks, TensorRT's fusions)"}
