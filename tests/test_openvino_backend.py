"""The OpenVINO backend (vitrt/backends/openvino.py) for real, on the small ViT's int8-cpu artifact, and
the rule that picks it (vitrt.fleet.cpu_backend) on fake machines."""

import threading
from collections import Counter

import numpy as np
import pytest

import vitrt
from vitrt.errors import BackendError, InputError
from vitrt.fleet import Machine, cpu_backend

ICELAKE = ("AVX2", "FMA", "AVX-512", "AVX-512 VNNI")
EPYC_ZEN2 = ("AVX2", "FMA")
SAPPHIRE = ICELAKE + ("AVX-VNNI", "AVX-512 BF16", "AMX-BF16", "AMX-INT8")
ALDER_LAKE = ("AVX2", "FMA", "AVX-VNNI")  # AVX-VNNI without AVX-512 (also Sierra Forest, Arrow Lake)


def cpu_machine(isa, openvino="2026.4.1"):
    return Machine(gpu=None, flavours={}, providers=("CPUExecutionProvider",), cpu_isa=isa, openvino=openvino)


def test_rule_openvino_where_it_measured_faster():
    assert cpu_backend(cpu_machine(ICELAKE), "int8-cpu")[0] == "openvino"
    assert cpu_backend(cpu_machine(SAPPHIRE), "int8-cpu")[0] == "openvino"
    name, why = cpu_backend(cpu_machine(EPYC_ZEN2), "int8-cpu")
    assert name == "onnxruntime" and "none of AMX-INT8, AVX-512 VNNI, AVX-VNNI" in why
    # AVX-VNNI alone: OpenVINO's fused int8 attention runs there (OPENVINO_INT8_ATTENTION_ISA), so int8-cpu
    # goes to OpenVINO; fp32 gains nothing from VNNI and stays where it measured no slower
    assert cpu_backend(cpu_machine(ALDER_LAKE), "int8-cpu")[0] == "openvino"
    assert cpu_backend(cpu_machine(ALDER_LAKE), "fp32")[0] == "onnxruntime"
    name, why = cpu_backend(cpu_machine(ICELAKE, openvino=None), "int8-cpu")
    assert name == "onnxruntime" and "openvino is not installed" in why
    assert cpu_backend(cpu_machine(ICELAKE), "fp32")[0] == "openvino"
    assert cpu_backend(cpu_machine(EPYC_ZEN2), "fp32")[0] == "onnxruntime"
    name, why = cpu_backend(cpu_machine(ICELAKE), "fp16")  # made for TensorRT; not measured on OpenVINO
    assert name == "onnxruntime" and "int8-cpu and fp32 only" in why


@pytest.fixture(scope="module")
def int8_cpu(small_build):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install '.[openvino]')")
    return small_build[0]["int8-cpu"]


@pytest.fixture(scope="module")
def crops(photos):
    return np.stack([vitrt.preprocess(p) for p in photos])


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_runs_the_linear_layers_in_int8_and_agrees_with_onnxruntime(int8_cpu, crops):
    with vitrt.Engine(int8_cpu, backend="openvino") as ov, vitrt.Engine(int8_cpu, backend="onnxruntime") as ort:
        assert ov.backend.name.startswith("openvino[CPU") and ov.backend_why == "backend= given"
        got, want = ov.infer(crops), ort.infer(crops)
        runtime = ov.backend.compiled[None].get_runtime_model()
        kinds = Counter((op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
                        for op in runtime.get_ops())
    # every Linear (2 blocks x qkv, proj, fc1, fc2) and the head, which the default recipe (NNCF's)
    # quantizes too, runs as an 8-bit FullyConnected
    fc = {k: n for k, n in kinds.items() if k[0] == "FullyConnected"}
    assert sum(n for (_, p), n in fc.items() if p in ("u8", "i8")) == 9 and sum(fc.values()) == 9, fc
    from vitrt.backends.onnxruntime import _saturates_here

    if _saturates_here():  # ONNX Runtime's probe: its kernel saturates here (by CPUID, as OpenVINO's does)
        # AVX2 alone: OpenVINO's 8-bit products saturate (it has no exact mode) and vitrt's ONNX Runtime's do
        # not (docs/precision.md, "Without VNNI": 0.982 against 0.9997 on the toy fine-tune). OpenVINO is held
        # to ONNX Runtime's own saturating kernels, which gave the same 0.98204 under an emulated AVX2 CPU.
        from vitrt.backends.onnxruntime import X64_QUANT_PRECISION, OnnxRuntimeBackend
        from vitrt.metadata import Metadata

        meta = Metadata.from_onnx(int8_cpu)
        plain = OnnxRuntimeBackend(int8_cpu, meta, session_config={X64_QUANT_PRECISION: "0"})
        parts = [plain.run({meta.input_name: crops[i:i + meta.max_batch]})
                 for i in range(0, len(crops), meta.max_batch)]
        want = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        plain.close()
    # The same Q/DQ graph on two runtimes: they differ by how each requantizes, measured at cosine
    # 0.9997 (embedding) on these photos, where each is 0.9996 from FP32. 0.999 leaves 3x that room.
    for name in ("logits", "embedding"):
        assert got[name].shape == want[name].shape and got[name].dtype == np.float32
        assert cosine(got[name], want[name]).min() > 0.999, name


def _where_ops_ran(path, op_type: str, attention_only: bool = False) -> dict:
    """For each ONNX node of ``op_type`` in ``path`` (with ``attention_only``, only those with no weight
    initializer: the attention MatMuls): (layer type, runtime precision, how many ONNX nodes it was
    fused with) of the OpenVINO runtime op that ran it."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    quantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    wanted = {n.name for n in graph.node if n.op_type == op_type
              and not (attention_only and any(quantized.get(i, i) in weights for i in n.input))}
    ran_in = {}
    with vitrt.Engine(path, backend="openvino") as ov:
        for op in ov.backend.compiled[None].get_runtime_model().get_ops():
            rt = op.get_rt_info()
            names = set(rt["originalLayersNames"].astype(str).split(","))
            for name in wanted & names:
                ran_in[name] = (rt["layerType"].astype(str), rt["runtimePrecision"].astype(str), len(names))
    assert set(ran_in) == wanted and len(wanted) >= 2  # at least one per block of the small ViT
    return ran_in


def test_attention_layout_follows_openvinos_int8_attention_requirement(ort_int8_cpu):
    """export/cpu_attention.py's layout, on the CPU this runs on:

    - where OpenVINO's fused int8 attention kernel runs (OPENVINO_INT8_ATTENTION_ISA: AMX, AVX-512 VNNI,
      AVX-VNNI; its own requirement), each block's Q·Kᵀ, Softmax and softmax·V run as one Subgraph in
      8 bits. ONNX Runtime's own attention Q/DQ layout, or FP32 attention, gives an FP32 Subgraph or
      separate MatMul/Softmax nodes there (docs/benchmarks.md);
    - elsewhere (AVX2 alone) OpenVINO does not fuse them: the two attention MatMuls run as separate
      8-bit oneDNN MatMuls and the Softmax as its own f32 node (seen on an AMD EPYC with AVX2 only)."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install '.[openvino]')")
    from vitrt.cpu import read_cpuinfo
    from vitrt.fleet import OPENVINO_INT8_ATTENTION_ISA

    fused = any(isa in read_cpuinfo().isa for isa in OPENVINO_INT8_ATTENTION_ISA)
    softmax = _where_ops_ran(ort_int8_cpu, "Softmax")
    matmuls = _where_ops_ran(ort_int8_cpu, "MatMul", attention_only=True)
    assert len(matmuls) == 4  # Q·Kᵀ and softmax·V, two blocks
    for name, (kind, precision, members) in softmax.items():
        if fused:
            assert kind == "Subgraph" and precision in ("i8", "u8"), (name, kind, precision)
            assert members >= 3, (name, members)  # the two MatMuls with the Softmax
        else:
            assert (kind, precision, members) == ("Softmax", "f32", 1), (name, kind, precision, members)
    for name, (kind, precision, _) in matmuls.items():
        assert precision in ("i8", "u8"), (name, kind, precision)  # 8-bit either way
        assert kind == ("Subgraph" if fused else "MatMul"), (name, kind)


def test_gelu_runs_inside_the_int8_fully_connected(ort_int8_cpu):
    """export/ort_quantize.py's float_into_gelu: with no Q/DQ between an MLP's first MatMul and its
    BiasGelu, OpenVINO runs the bias and the GELU as post-ops of the int8 FullyConnected. With the
    quantizer's Q/DQ there they ran as a separate dequantize-GELU-quantize Subgraph (docs/benchmarks.md)."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install '.[openvino]')")
    for name, (kind, precision, _) in _where_ops_ran(ort_int8_cpu, "BiasGelu").items():
        assert kind == "FullyConnected" and precision.lower() in ("i8", "u8"), (name, kind, precision)


def test_static_shapes_then_dynamic_and_threads(int8_cpu, crops):
    from vitrt.backends.openvino import STATIC_SHAPES

    with vitrt.Engine(int8_cpu, backend="openvino") as engine:
        singles = np.concatenate([engine.infer(crops[i:i + 1])["embedding"] for i in range(4)])
        for n in (2, 3, 4):
            out = engine.infer(crops[:n])["embedding"]
            # one image alone or in a batch: the same int8 kernels, summed in another order
            assert cosine(out, singles[:n]).min() > 0.9999
        assert sorted(k for k in engine.backend.compiled if k is not None) == [1, 2][:STATIC_SHAPES]
        results = {}

        def call(i):
            results[i] = engine.infer(crops[i:i + 1])["embedding"]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(np.array_equal(results[i], singles[i:i + 1]) for i in range(4))  # a request per thread
        assert "threads=" in repr(engine) and engine.threads >= 1
    with pytest.raises(BackendError, match="closed"):
        engine.infer(crops[:1])


def test_refusals(int8_cpu, small_build):
    with pytest.raises(InputError, match="backend='tflite'; expected 'onnxruntime', 'openvino'"):
        vitrt.Engine(int8_cpu, backend="tflite")
    with pytest.raises(InputError, match="providers=.*are ONNX Runtime's"):
        vitrt.Engine(int8_cpu, backend="openvino", providers=["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="fp8 artifact; vitrt runs fp32 and int8-cpu"):
        vitrt.Engine(small_build[0]["fp8"], backend="openvino")


def test_default_follows_the_rule_here(int8_cpu):
    """With no backend given, Engine asks cpu_backend about this very machine, and says why."""
    expected, why = cpu_backend(Machine.here(), "int8-cpu")
    with vitrt.Engine(int8_cpu) as engine:
        assert engine.backend.name.split("[")[0] == expected and engine.backend_why == why


def test_passes_the_artifacts_own_gate(int8_cpu, capsys, tmp_path):
    """What the build verified on ONNX Runtime holds on OpenVINO: `vitrt verify --backend openvino`
    reruns the gate (Engine.verify) on it."""
    import json

    from vitrt.cli import main

    assert main(["verify", str(int8_cpu), "--backend", "openvino", "--report", str(tmp_path / "r.json")]) == 0
    assert "PASSED" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["backend"].startswith("openvino")


def test_an_int8_graph_on_a_cpu_without_vnni_is_warned_about(int8_cpu, caplog):
    """OpenVINO has no exact mode for u8 x s8 on AVX2 alone (ONNX Runtime does, and vitrt sets it): the
    toy ViT's int8-cpu read 0.982 photo cosine on OpenVINO under an emulated AVX2 CPU. The warning names
    the way out."""
    import logging
    from pathlib import Path

    from vitrt import cpu
    from vitrt.backends.openvino import _warn_saturation
    from vitrt.metadata import Metadata

    data = Path(__file__).parent / "data" / "cpuinfo"
    meta = Metadata.from_onnx(int8_cpu)
    with caplog.at_level(logging.WARNING, logger="vitrt"):
        _warn_saturation(meta, "m.onnx", cpu.parse_cpuinfo((data / "xeon_icelake_avx512_vnni.txt").read_text()))
        assert not caplog.records
        _warn_saturation(meta, "m.onnx", cpu.parse_cpuinfo((data / "epyc_7702_avx2.txt").read_text()))
    assert len(caplog.records) == 1 and "saturate" in caplog.text and "backend='onnxruntime'" in caplog.text
