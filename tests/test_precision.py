"""FP16 / INT8 / FP8 variants on a small ViT: graph structure, metadata, the parity gate, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

import vitrt
from conftest import MODEL, SMALL_KWARGS, build_opts
from export.build import BuildOptions, build
from vitrt.errors import BuildError
from vitrt.metadata import Metadata


def _opts(out: Path, **kw) -> BuildOptions:
    return build_opts(out, **kw)


@pytest.fixture(scope="module")
def variants(small_build):
    return small_build


def _types(model) -> dict[str, int]:
    """elem_type of every tensor: inputs, outputs, initializers and inferred intermediates."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


def test_builds_all_and_logs(variants):
    paths, logs = variants
    assert {"fp32", "fp16", "int8", "fp8", "int8-cpu"} <= set(paths) and all(k.startswith("plan_") for k in set(paths) - {
        "fp32", "fp16", "int8", "fp8", "int8-cpu"})  # plans: tests/test_tensorrt_build.py
    assert "plan_int8-cpu" not in paths and paths["int8-cpu"].name == "m_int8_cpu.onnx"
    from vitrt.cuda import gpu_count

    says = [m for m in logs if m.startswith("On this machine (no NVIDIA GPU) serve")]
    if gpu_count():  # a GPU host: the plans serve; no CPU advice
        assert says == [], says
    else:
        assert len(says) == 1 and "m_int8_cpu.onnx" in says[0], logs
        from vitrt.fleet import Machine, cpu_backend

        assert f"on {cpu_backend(Machine.here(), 'int8-cpu')[0]} (" in says[0]  # the runtime Engine will use
    assert all(p.is_file() and p.with_name(p.name + ".parity.json").is_file() for p in paths.values())
    assert any("TensorRT recommends at least 500" in m for m in logs)  # builtin set has 32 images


def test_fp16_graph(variants):
    path = variants[0]["fp16"]
    model = onnx.load(path)
    types = _types(model)
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types["image"] == onnx.TensorProto.UINT8 and types["logits"] == F32 and types["embedding"] == F32
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert matmuls and all(types[n.input[0]] == F16 for n in matmuls)  # random weights: AutoCast flags nothing
    lns = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(lns) == 2 * SMALL_KWARGS["depth"] + 1
    for ln in lns:  # FP16 in and out, statistics in FP32 (stash_type=1, the ONNX default, kept explicit)
        stash = {a.name: a.i for a in ln.attribute}.get("stash_type", 1)
        assert stash == 1 and types[ln.input[0]] == F16
    meta = Metadata.from_onnx(path).data
    assert meta["precision"] == "fp16" and meta["precision_pass"]["tool"].startswith("modelopt.onnx.autocast")
    assert meta["source_onnx"]["file"] == "m.onnx" and len(meta["source_onnx"]["sha256"]) == 64
    assert meta["calibration"]["source"] == "builtin" and meta["calibration"]["used"] == 1


def test_int8_graph(variants):
    path = variants[0]["int8"]
    model = onnx.load(path)
    types = _types(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}

    def from_dq(name):
        return name in producers and producers[name].op_type == "DequantizeLinear"

    linear, attention = [], []
    for n in model.graph.node:
        if n.op_type != "MatMul":
            continue
        src_ops = {producers[i].op_type for i in n.input if i in producers}
        (attention if src_ops & {"Softmax", "Mul", "Transpose"} and not any(map(from_dq, n.input)) else linear).append(n)
    assert len(linear) == 4 * SMALL_KWARGS["depth"]  # qkv, proj, fc1, fc2 per block
    assert all(from_dq(n.input[0]) and from_dq(n.input[1]) for n in linear)
    assert len(attention) == 2 * SMALL_KWARGS["depth"] and not any(from_dq(i) for n in attention for i in n.input)
    # the accurate recipe (export/precision.py RECIPES): the Linear MatMuls only; the patch Conv and the
    # LayerNorms' residual inputs stay in float (the fast recipe quantized them: test below)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert not from_dq(conv.input[0]) and not from_dq(conv.input[1])
    assert not any(from_dq(i) for n in model.graph.node if n.op_type in ("Add", "LayerNormalization") for i in n.input)
    # weights: int8 initializer -> DequantizeLinear -> MatMul (ModelOpt stores them quantized in its FP16
    # recipes), per-channel (one scale per output channel, axis 1 of the [in, out] weight) and symmetric
    for n in linear:
        dq = producers[n.input[1]]
        src = dq.input[0] if dq.input[0] in inits else producers[dq.input[0]].input[0]  # int8, or float -> Q
        assert dq.op_type == "DequantizeLinear" and src in inits, n.name
        weight, scale, zero = inits[src], inits[dq.input[1]], inits[dq.input[2]]
        assert weight.dtype in (np.int8, np.float16) and scale.shape == (weight.shape[1],)
        assert zero.dtype == np.int8 and not zero.any()
        assert {a.name: a.i for a in dq.attribute}.get("axis") == 1
    assert types["image"] == onnx.TensorProto.UINT8 and types["logits"] == onnx.TensorProto.FLOAT
    # FP16 for what is not quantized (a GPU runs it on the FP16 kernels the fp16 plan uses), LayerNorm
    # with FP32 statistics (stash_type 1)
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    assert types[ln.output[0]] == onnx.TensorProto.FLOAT16
    assert {a.name: a.i for a in ln.attribute}.get("stash_type", 1) == 1
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert types[softmax.output[0]] == onnx.TensorProto.FLOAT16
    meta = Metadata.from_onnx(path).data
    cal = meta["calibration"]
    assert cal["source"] == "builtin" and cal["count"] == 32 and cal["method"] == "entropy" and len(cal["list_sha256"]) == 64
    assert meta["precision_pass"]["smoothquant"] is None  # the "smooth" recipe migrates (test_smooth.py)
    est = meta["plan_estimate"]
    assert est["around"] == "fp16" and est["attention"] == "fp16" and est["linear_mac_share"] == {"int8": 1.0}
    assert all(v > 1.0 for v in est["speedup_vs_fp16"].values())  # faster than the fp16 plan by construction
    assert meta["precision_pass"]["disable_mha_qdq"] is True and meta["precision_pass"]["qdq_pairs"] > 0


def test_per_channel_weight_scales(variants):
    """Every weight quantizer (a QuantizeLinear on an initializer) has one scale per output channel,
    in int8 and fp8 alike: 4 Linear layers per block."""
    for precision, extra in (("int8", 0), ("fp8", 0)):  # the accurate recipe quantizes no Conv
        model = onnx.load(variants[0][precision])
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        # DequantizeLinear on an 8-bit initializer (ModelOpt stores weights quantized) or on Q(weight)
        producers = {o: n for n in model.graph.node for o in n.output}
        weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and (
            n.input[0] in inits or (n.input[0] in producers and producers[n.input[0]].input[0] in inits))]
        assert len(weight_dq) == 4 * SMALL_KWARGS["depth"] + extra, precision
        for q in weight_dq:
            w = inits[q.input[0]] if q.input[0] in inits else inits[producers[q.input[0]].input[0]]
            scale = inits[q.input[1]]
            axis = {a.name: a.i for a in q.attribute}.get("axis", 1)
            assert scale.ndim == 1 and scale.size == w.shape[axis] > 1, (precision, q.name)


def _int8_cpu_layout(model):
    """(which MatMuls/Gemms/Convs read an int8 DequantizeLinear activation, by kind) of an int8-cpu graph."""
    from export.smooth import linear_layers

    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    linear = {id(x["node"]) for x in linear_layers(model)}
    assert len(linear) == 4 * SMALL_KWARGS["depth"]
    got = Counter()
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        act = producers.get(n.input[0])  # NNCF quantizes proj's input before the heads' Reshape
        while act is not None and act.op_type in ("Reshape", "Transpose"):
            act = producers.get(act.input[0])
        act = act if act is not None and act.op_type == "DequantizeLinear" else None
        src = producers.get(n.input[0])
        while src is not None and src.op_type in ("DequantizeLinear", "QuantizeLinear", "Cast"):
            src = producers.get(src.input[0])
        kind = ("linear" if id(n) in linear else n.op_type if n.op_type != "MatMul"
                else "attention p.v" if src is not None and src.op_type == "Softmax" else "attention q.k")
        if act is not None:
            assert inits[act.input[1]].size == 1, n.name  # per-tensor activation scale
            got[kind] += 1
        else:
            got[kind + " (float)"] += 1
    return got


def test_int8_cpu_graph(variants, photos):
    """The default int8-cpu (CPU_RECIPES "nncf", export/nncf_quantize.py): NNCF's QDQ on the 4 Linear
    MatMuls per block, Q·Kᵀ, the patch Conv and the head; softmax·V, LayerNorm and Softmax in FP32;
    the contract holds; the metadata names the tool and its settings; ONNX Runtime runs it with float
    outputs."""
    path = variants[0]["int8-cpu"]
    model = onnx.load(path)
    types = _types(model)
    layout = _int8_cpu_layout(model)
    depth = SMALL_KWARGS["depth"]
    assert layout == {"linear": 4 * depth, "attention q.k": depth, "attention p.v (float)": depth, "Conv": 1,
                      "Gemm": 1}, layout
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    assert types[ln.output[0]] == onnx.TensorProto.FLOAT
    assert types["image"] == onnx.TensorProto.UINT8 and types["logits"] == types["embedding"] == onnx.TensorProto.FLOAT
    meta = Metadata.from_onnx(path).data
    assert meta["precision"] == "int8-cpu" and meta["calibration"]["method"] == "nncf"
    pp = meta["precision_pass"]
    assert pp["tool"] == "nncf.quantize" and meta["recipe"]["recipe"] == "nncf"
    assert (pp["model_type"], pp["preset"], pp["activations_range"], pp["smooth_quant"]) == (
        "TRANSFORMER", "MIXED", "MINMAX", False)
    assert pp["subset_size"] == meta["calibration"]["used"] == 32
    with vitrt.Engine(path) as e:
        out = e.infer(np.stack([vitrt.preprocess(p) for p in photos[:2]]))
    assert len(np.unique(out["logits"][0])) > 900  # float outputs, not 256 levels


def test_int8_cpu_modelopt_recipe_graph(modelopt_int8_cpu):
    """``--cpu-recipe modelopt``: ModelOpt's symmetric int8 Q/DQ on the 4 Linear MatMuls per block only,
    per-channel weights; attention, LayerNorm, Softmax, the Conv and the head in FP32; SmoothQuant looked
    at every Linear layer and migrated only those with an outlier channel (SMOOTH_MIN_RATIO)."""
    model = onnx.load(modelopt_int8_cpu)
    depth = SMALL_KWARGS["depth"]
    assert _int8_cpu_layout(model) == {"linear": 4 * depth, "attention q.k (float)": depth,
                                       "attention p.v (float)": depth, "Conv (float)": 1, "Gemm (float)": 1}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zeros = [inits[n.input[2]] for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 2]
    assert zeros and all(z.dtype == np.int8 and not z.any() for z in zeros)  # symmetric
    meta = Metadata.from_onnx(modelopt_int8_cpu).data
    assert meta["calibration"]["method"] == "entropy" and meta["recipe"]["recipe"] == "modelopt"
    assert meta["precision_pass"]["high_precision_dtype"] == "fp32"
    smooth = meta["precision_pass"]["smoothquant"]
    assert smooth["alpha"] == 0.5 and smooth["min_ratio"] == 8.0
    assert sum(smooth["migrated"].values()) + sum(smooth["skipped"].values()) == 4 * depth, smooth
    assert set(smooth["skipped"]) <= {"no outlier"}, smooth


def test_a_recipe_that_calibrates_its_own_way_refuses_a_method():
    from export.precision import calibration_method

    assert calibration_method("int8-cpu", "auto", "nncf") == "nncf"
    assert calibration_method("int8-cpu", "auto", "modelopt") == "entropy"
    with pytest.raises(BuildError, match="calibrates its own way"):
        calibration_method("int8-cpu", "max", "nncf")


@pytest.mark.parametrize("kwargs, match", [
    ({"calib_method": "max"}, "--calib-method max with int8-cpu recipe 'nncf'"),
    ({"quantize_op_types": ["MatMul"]}, "--quantize-op-types with int8-cpu recipe 'nncf'"),
    ({"quantize_attention": True}, "--quantize-attention with int8-cpu recipe 'nncf'"),
    ({"cpu_recipe": "nope"}, "int8-cpu recipe 'nope'; expected one of nncf, modelopt"),
])
def test_options_int8_cpu_cannot_take_fail_before_any_export(tmp_path, kwargs, match):
    """PRECISION=all with an option the int8-cpu recipe cannot take fails at once, before the fp32 export
    and the other variants (nothing is written)."""
    with pytest.raises(BuildError, match=match):
        build(build_opts(tmp_path / "out", precision="all", calib_dir="builtin", plan="no", **kwargs), log=lambda m: None)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_int8_cpu_ort_recipe_graph(ort_int8_cpu, photos):
    """``--cpu-recipe ort``: ONNX Runtime's QDQ: per-channel symmetric int8 weights and uint8 activations
    on the 4 Linear MatMuls per block and the head Gemm; the 2 attention MatMuls per block in int8 too,
    in the layout of export/cpu_attention.py; LayerNorm and Softmax stay FP32; the contract (uint8 image
    in, float32 out) holds; the metadata names the tool and the calibration."""
    from export.cpu_attention import attention_matmuls

    path = ort_int8_cpu
    model = onnx.load(path)
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}

    def dq(name):
        n = producers.get(name)
        return n if n is not None and n.op_type == "DequantizeLinear" else None

    depth = SMALL_KWARGS["depth"]
    attention = attention_matmuls(model.graph)
    assert len(attention) == 2 * depth
    linear = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n not in attention]
    assert len(linear) == 4 * depth + 1
    for n in linear:
        act, weight = dq(n.input[0]), dq(n.input[1])
        assert act is not None and weight is not None, n.name
        assert inits[act.input[2]].dtype == np.uint8  # asymmetric uint8 activations
        assert inits[weight.input[2]].dtype == np.int8 and not inits[weight.input[2]].any()  # symmetric weights
        assert inits[weight.input[1]].ndim == 1 and inits[weight.input[1]].size > 1  # per channel
    for n in attention:
        # no Q/DQ on the output: Q·Kᵀ goes to the Softmax in FP32, softmax·V to the head merge
        assert all(c.op_type != "QuantizeLinear" for c in consumers[n.output[0]]), n.name
        a, b = producers[n.input[0]], producers[n.input[1]]
        if b.op_type == "Transpose":  # Q·Kᵀ: Q's and K's Q/DQ symmetric int8; K's before its Transpose
            b = dq(b.input[0])
            for d in (a, b):
                assert d.op_type == "DequantizeLinear" and inits[d.input[2]].dtype == np.int8
                assert not inits[d.input[2]].any()
        else:  # softmax·V: probabilities uint8 from 0, V symmetric int8
            assert producers[producers[a.input[0]].input[0]].op_type == "Softmax"
            assert inits[a.input[2]].dtype == np.uint8 and not inits[a.input[2]].any()
            assert inits[b.input[2]].dtype == np.int8 and not inits[b.input[2]].any()
    # the outputs are the float values the head and the final LayerNorm computed: ONNX Runtime's
    # quantizer had put them through uint8 Q/DQ (256 levels: tied logits, rounded embeddings)
    # each MLP's GELU reads its MatMul's float output (OpenVINO fuses bias, GELU and the next Q into the
    # int8 FullyConnected); its own output is quantized for the next MatMul
    gelus = [n for n in model.graph.node if n.op_type == "BiasGelu"]
    assert len(gelus) == depth and Metadata.from_onnx(path).data["precision_pass"]["float_into_gelu"] == depth
    for g in gelus:
        assert producers[g.input[0]].op_type == "MatMul"
        assert [c.op_type for c in consumers[g.output[0]]] == ["QuantizeLinear"]
    # no initializer is left that no node reads (ONNX Runtime warns about each at load)
    read = {i for n in model.graph.node for i in n.input}
    assert [i.name for i in model.graph.initializer if i.name not in read] == []
    assert producers["logits"].op_type == "Gemm" and producers["embedding"].op_type == "Gather"
    assert any(dq(i) for i in producers["logits"].input)  # the head still reads the int8 embedding
    with vitrt.Engine(path) as e:
        out = e.infer(np.stack([vitrt.preprocess(p) for p in photos[:2]]))
    assert len(np.unique(out["logits"][0])) > 900  # through uint8 Q/DQ: at most 256 distinct values
    types = _types(model)
    assert types["image"] == onnx.TensorProto.UINT8 and types["logits"] == types["embedding"] == onnx.TensorProto.FLOAT
    meta = Metadata.from_onnx(path).data
    assert meta["precision"] == "int8-cpu" and meta["calibration"]["method"] == "minmax"
    assert meta["precision_pass"]["float_outputs"] == ["logits", "embedding"]
    assert meta["precision_pass"]["tool"] == "onnxruntime.quantization.quantize_static"
    assert meta["precision_pass"]["attention"]["matmuls"] == 2 * depth
    with vitrt.Engine(path) as e:
        assert e.embed(photos[0]).shape == (SMALL_KWARGS["embed_dim"],)


def test_fp8_graph_and_runtime(variants, photos):
    path = variants[0]["fp8"]
    model = onnx.load(path)
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    inits = {i.name: i for i in model.graph.initializer}
    zp_types = {inits[q.input[2]].data_type for q in qs if len(q.input) > 2 and q.input[2] in inits}
    assert zp_types == {onnx.TensorProto.FLOAT8E4M3FN}
    with vitrt.Engine(path) as e:  # ORT CPU needs the QDQ fusions off for FP8: Engine sets that from metadata
        assert len(e.predict(photos[0])) == 5 and e.embed(photos[0]).shape == (SMALL_KWARGS["embed_dim"],)


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp8", "int8-cpu"])
def test_variants_share_api_and_agree(variants, precision, photos):
    with vitrt.Engine(variants[0]["fp32"]) as ref, vitrt.Engine(variants[0][precision]) as e:
        assert e.metadata.precision == precision
        a, b = ref.embed(photos[:3]), e.embed(photos[:3])
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > (0.999 if precision == "fp16" else 0.9)
        report = json.loads(variants[0][precision].with_name(variants[0][precision].name + ".parity.json").read_text())
        assert report["passed"] and report["random_weights"] and "top1_agree" not in str(report["thresholds"])


def test_reuse_and_rebuild(variants, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(variants[0]["fp32"].parent, out)  # the session's build stays as it is
    paths = {k: out / p.name for k, p in variants[0].items()}
    logs: list[str] = []
    mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    build(_opts(out, precision="all", calib_dir="builtin"), log=logs.append)
    assert sum("up to date" in m for m in logs) == len(paths)  # 4 ONNX files and the plans
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == mtimes
    logs.clear()
    build(_opts(out, precision="int8", calib_dir="builtin", calib_method="max"), log=logs.append)
    assert paths["int8"].stat().st_mtime_ns != mtimes["int8"]
    assert Metadata.from_onnx(paths["int8"]).data["calibration"]["method"] == "max"  # auto was entropy
    assert paths["fp16"].stat().st_mtime_ns == mtimes["fp16"]  # only what was asked
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx"):  # the session build made plans (TRT=tensorrt-rtx): its ONNX changed, so rebuilt
        assert paths["plan_int8"].stat().st_mtime_ns != mtimes["plan_int8"]
    else:
        assert "plan_int8" not in paths
    # a variant made by an older pass (a vitrt upgrade that changes the int8-cpu graph) is remade
    from export import precision as precision_module

    monkeypatch.setitem(precision_module.VARIANT_REVISION, "int8-cpu", precision_module.VARIANT_REVISION["int8-cpu"] + 1)
    build(_opts(out, precision="int8-cpu", calib_dir="builtin", plan="no"), log=logs.append)
    assert paths["int8-cpu"].stat().st_mtime_ns != mtimes["int8-cpu"]
    assert paths["fp16"].stat().st_mtime_ns == mtimes["fp16"]
    # an artifact whose parity report is gone counts as not built (a kill between the two renames)
    (out / "m_fp16.onnx.parity.json").unlink()
    logs.clear()
    build(_opts(out, precision="fp16", plan="no"), log=logs.append)
    assert any(m.startswith("making fp16") for m in logs) and (out / "m_fp16.onnx.parity.json").is_file()


def test_gate_fails_on_overquantized_variant(variants, tmp_path):
    """Quantizing every op type (Add, Mul, Softmax, LayerNorm inputs, attention) ruins accuracy: the gate
    must catch it and publish nothing; --allow-parity-failure publishes it with the failure on record."""
    import shutil

    out = tmp_path / "broken"
    out.mkdir()
    shutil.copy(variants[0]["fp32"], out / "m.onnx")
    every = ["MatMul", "Gemm", "Conv", "Add", "Mul", "Div", "Sub", "Softmax", "LayerNormalization"]
    opts = _opts(out, precision="int8", calib_dir="builtin", quantize_op_types=every, quantize_attention=True)
    with pytest.raises(BuildError, match="m_int8.onnx failed its parity gate"):
        build(opts, log=lambda m: None)
    assert not (out / "m_int8.onnx").exists()
    failed = json.loads((out / "m_int8.onnx.parity-failed.json").read_text())
    assert failed["passed"] is False and any(not c["held"] for c in failed["thresholds"].values())
    opts.allow_parity_failure = True
    build(opts, log=lambda m: None)
    report = json.loads((out / "m_int8.onnx.parity.json").read_text())
    assert (out / "m_int8.onnx").is_file() and report["passed"] is False and report["overridden"] is True


#: Seeds of the small ViT where the default gate rejects the fast int8 on every CPU tried: 1-7 of the 8
#: that export.gate's spread was measured on (fast worst photo cosine 0.8919-0.9709 on the EPYC, against
#: the 0.99 limit; docs/precision.md). Seed 0 (0.9808 there) is rejected on the AVX-512 VNNI EPYC and
#: passes the default gate on a Sapphire Rapids Xeon with AMX: it is left out.
FAST_REJECTED_SEEDS = range(1, 8)


@pytest.mark.parametrize("seed", FAST_REJECTED_SEEDS)
def test_the_default_gate_rejects_a_fast_int8_on_every_seed(tmp_path, seed):
    """The default recipe's gate (TOY_VIT_GATE, from its spread) rejects an int8 made the fast way, on
    every seed measured: the gate tells the recipes apart on each of them, not on a lucky one."""
    fast = _opts(tmp_path, seed=seed, precision="int8", calib_dir="builtin", plan="no", quant_recipe="fast")
    with pytest.raises(BuildError, match="m_int8.onnx failed its parity gate"):
        build(fast, log=lambda m: None)
    failed = json.loads((tmp_path / "m_int8.onnx.parity-failed.json").read_text())
    worst = failed["thresholds"]["photos.logits.cosine_min"]
    assert not worst["held"] and worst["value"] < 0.99, worst


def test_the_gate_rejects_an_int8_made_the_old_way(tmp_path):
    """On seed 3 of the small ViT (fast 0.91 worst photo cosine, accurate 0.998; docs/precision.md): the
    fast recipe stays reachable with its own gate, the accurate one passes the default gate, and each
    variant records its recipe. (On trained weights every old recipe fails the stated gate:
    tests/test_real_weights.py.)"""
    from export.gate import TOY_VIT_GATE_FAST

    fast = _opts(tmp_path / "fast", seed=3, precision="int8", calib_dir="builtin", plan="no", quant_recipe="fast",
                 gate=TOY_VIT_GATE_FAST)
    passed = build(fast, log=lambda m: None)["int8"]
    accurate = build(_opts(tmp_path / "accurate", seed=3, precision="int8", calib_dir="builtin", plan="no"),
                     log=lambda m: None)["int8"]
    got = {}
    for name, path in (("fast", passed), ("accurate", accurate)):
        meta = Metadata.from_onnx(path).data
        got[name] = (meta["precision_pass"]["recipe"], meta["precision_pass"]["high_precision_dtype"],
                     meta["precision_pass"]["quantized_ops"])
        assert meta["recipe"]["recipe"] == name
    assert got["accurate"] == ("accurate", "fp16", {"MatMul": 8})  # the 4 Linear MatMuls of each of 2 blocks
    assert got["fast"][:2] == ("fast", "fp16") and got["fast"][2].get("Conv") == 1


# --- calibration inputs --------------------------------------------------------------------------
def test_no_calib_dir_is_an_error_that_says_what_to_pass(tmp_path):
    for precision in ("int8", "fp8", "all"):
        with pytest.raises(BuildError, match=r"CALIB_DIR=/path/to/images.*CALIB_DIR=builtin"):
            build(_opts(tmp_path, precision=precision), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # failed before any work


def test_calibration_folder_errors(tmp_path):
    from export.calibration import load_calibration

    with pytest.raises(BuildError, match="is not a folder"):
        load_calibration(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(BuildError, match="has no images"):
        load_calibration(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("not a jpeg")
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(BuildError, match="none of the 2 images .* could be read"):
        load_calibration(bad, log=lambda m: None)


def test_calibration_skips_unreadable_with_a_count(tmp_path, photos):
    import shutil

    from export.calibration import load_calibration

    folder = tmp_path / "calib"
    (folder / "class_a").mkdir(parents=True)
    for p in photos[:3]:
        shutil.copy(p, folder / "class_a" / p.name)
    (folder / "class_a" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    logs: list[str] = []
    batch, prov = load_calibration(folder, log=logs.append)
    assert batch.shape == (3, 384, 384, 3) and batch.dtype == np.uint8
    assert prov["count"] == 3 and prov["skipped"] == 1 and prov["found"] == 4
    assert any("skipped 1 unreadable" in m for m in logs) and any("at least 500" in m for m in logs)
    np.testing.assert_array_equal(batch[0], vitrt.preprocess(sorted((folder / "class_a").glob("*.png"))[0]))
    _, again = load_calibration(folder, log=logs.append)
    assert again["list_sha256"] == prov["list_sha256"]
    (folder / "class_a" / photos[0].name).write_bytes(photos[1].read_bytes())
    _, changed = load_calibration(folder, log=logs.append)
    assert changed["list_sha256"] != prov["list_sha256"]  # content, not just names


def test_calibration_limit_is_evenly_spaced(tmp_path, photos):
    import shutil

    from export.calibration import load_calibration

    for i in range(10):
        shutil.copy(photos[i % len(photos)], tmp_path / f"{i:02d}{photos[i % len(photos)].suffix}")
    _, prov = load_calibration(tmp_path, limit=4, log=lambda m: None)
    assert prov["count"] == 4 and prov["found"] == 10


def test_bad_precision_value(tmp_path):
    with pytest.raises(BuildError, match="PRECISION='fp4'"):
        build(_opts(tmp_path, precision="fp4"), log=lambda m: None)


def test_autocast_keeps_overflowing_nodes_in_fp32(tmp_path, photos):
    """A block whose MLP activations reach ~1e4 (FP16 tops out at 65504, AutoCast flags > 512) keeps
    that MLP in FP32; the rest goes FP16. --fp16-keep-fp32 adds op types on top."""
    import torch

    from export.calibration import load_calibration
    from export.onnx_export import export_onnx
    from export.precision import make_variant
    from export.weights import load_model

    model, prov = load_model(MODEL, "random", seed=0, model_kwargs=SMALL_KWARGS)
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight.mul_(20000.0)
    src = tmp_path / "hot.onnx"
    export_onnx(model, src, model_name=MODEL, provenance=prov, model_kwargs=SMALL_KWARGS, verify=False, log=lambda m: None)
    calib, cprov = load_calibration("builtin", log=lambda m: None)
    meta = Metadata.from_onnx(src).data
    fp16, _ = make_variant("fp16", src, meta, calib[:1], cprov, log=lambda m: None)
    types = _types(fp16)
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    inits = {i.name for i in fp16.graph.initializer}
    # Linear layers in graph order: qkv, proj, fc1, fc2 per block (weights are initializers)
    linear = [n for n in fp16.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(linear) == 4 * SMALL_KWARGS["depth"]
    fc1, fc2 = linear[4 + 2], linear[4 + 3]
    assert types[fc1.output[0]] == F32 and types[fc2.input[0]] == F32  # block 1's MLP stays FP32
    assert any(n.op_type == "Erf" and types[n.output[0]] == F32 for n in fp16.graph.node)
    assert types[linear[0].output[0]] == F16 and types[linear[1].output[0]] == F16  # block 0 goes FP16
    kept, _ = make_variant("fp16", src, meta, calib[:1], cprov, keep_fp32_ops=["Softmax"], log=lambda m: None)
    kt = _types(kept)
    assert all(kt[n.input[0]] == onnx.TensorProto.FLOAT for n in kept.graph.node if n.op_type == "Softmax")


def test_fp16_only_build_does_not_warn_about_calibration_size(tmp_path):
    logs: list[str] = []
    build(_opts(tmp_path, precision="fp16"), log=logs.append)
    assert not any("at least 500" in m for m in logs)  # FP16's range check is not INT8 calibration
    assert Metadata.from_onnx(tmp_path / "m_fp16.onnx").data["calibration"]["used"] == 1


@pytest.mark.parametrize("saturates", [True, False])
def test_nncfs_own_sessions_get_the_exact_int8_mode_where_u8_s8_saturates(saturates):
    """NNCF's fast bias correction runs quantized layers on ONNX Runtime sessions of its own
    (nncf/onnx/engine.py: ``rt.SessionOptions()``); where u8 x s8 saturates they get vitrt's exact mode,
    so the bias it fits does not make up for a saturation the Engine will not have (docs/precision.md,
    "Without VNNI"). Elsewhere nothing is touched. In a fresh interpreter, as export/precision.py runs it;
    the CPU's answer is forced both ways (this CPU gives one)."""
    import subprocess
    import sys

    script = (
        "import vitrt.backends.onnxruntime as b\n"
        f"b._saturates_here = lambda: {saturates}\n"
        "import onnxruntime as rt\n"
        "original = rt.SessionOptions\n"
        "import export.nncf_quantize as q\n"
        f"assert q.exact_int8_sessions() is {saturates}\n"
        "from nncf.onnx.engine import ONNXEngine\n"
        "import onnx\n"
        "engine = ONNXEngine(onnx.load_from_string(__import__('base64').b64decode(b.PROBE)))\n"
        "try:\n"
        "    value = engine.sess.get_session_options().get_session_config_entry(b.X64_QUANT_PRECISION)\n"
        "except RuntimeError:\n"
        "    value = None\n"
        "print(value, rt.SessionOptions is original)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == (["1", "False"] if saturates else ["None", "True"]), out.stdout
