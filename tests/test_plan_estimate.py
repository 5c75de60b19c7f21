"""export/plan_estimate.py: a plan's time by TensorRT's rules, read from the graph; and its benchmark."""

from __future__ import annotations

import onnx
import pytest

from export import plan_estimate as pe


def test_a_kernel_is_bound_by_its_math_or_its_bytes():
    gpu = {"fp16": 100.0, "int8": 200.0, "fp32": 10.0, "bandwidth": 1.0}  # TFLOPS and TB/s
    math = {"flops": 2e12, "bytes": 1e9, "precision": "fp16"}  # 20 ms of math, 1 ms of memory
    assert pe.kernel_time(math, gpu) == pytest.approx(0.02)
    assert pe.kernel_time({**math, "precision": "int8"}, gpu) == pytest.approx(0.01)
    memory = {"flops": 0, "bytes": 5e10, "precision": "fp16"}  # a LayerNorm: 50 ms of bytes
    assert pe.kernel_time(memory, gpu) == pytest.approx(0.05)


def test_vit_b_estimates():
    """The recipes' layouts on ViT-B/16-384 at batch 32 (docs/tensorrt.md): 8-bit GEMMs with FP16 around
    beat the fp16 plan, FP32 around them does not (the unfused FP32 attention)."""
    from benchmarks.plan_estimate import MODELS, graph

    dims = MODELS["ViT-B/16-384"]
    fast = pe.speedup_vs_fp16(graph(dims, "int8", "fp16", "fp16"))
    slow = pe.speedup_vs_fp16(graph(dims, "int8", "fp32", "fp32"))
    mha = pe.speedup_vs_fp16(graph(dims, "fp8", "fp8", "fp16"))
    for gpu in pe.GPUS:
        assert 1.4 <= fast[gpu] < 2.0 and slow[gpu] < 0.5 and mha[gpu] > fast[gpu], (gpu, fast, slow, mha)
    assert pe.speedup_vs_fp16(graph(dims, "fp16", "fp16", "fp16")) == {g: 1.0 for g in pe.GPUS}


def test_the_graph_says_what_each_variant_runs(small_build):
    paths = small_build[0]
    g16 = pe.from_onnx(onnx.load(str(paths["fp16"])))
    assert g16.around == "fp16" and g16.attention == "fp16" and {v for lin in g16.linear for v in lin.values()} == {"fp16"}
    for precision in ("int8", "fp8"):
        model = onnx.load(str(paths[precision]))
        g = pe.from_onnx(model)
        assert (g.around, g.attention) == ("fp16", "fp16"), precision
        assert {v for lin in g.linear for v in lin.values()} == {precision}
        assert g.width == 64 and g.heads == 2 and g.depth == 2 and g.tokens == 577
        rec = pe.record(model)
        assert rec["linear_mac_share"] == {precision: 1.0} and all(v > 1 for v in rec["speedup_vs_fp16"].values())
    cpu = pe.from_onnx(onnx.load(str(paths["int8-cpu"])))
    # made for CPUs (NNCF's Q·Kᵀ in int8, softmax·V and the rest FP32): by TensorRT's rules slower than fp16
    assert cpu.around == "fp32" and cpu.attention in ("int8", "fp32")
    assert all(v < 1 for v in pe.speedup_vs_fp16(cpu).values())


def test_the_benchmark_writes_its_table(tmp_path, small_build):
    from benchmarks.plan_estimate import main

    assert main(["--out", str(tmp_path)]) == 0
    md = (tmp_path / "plan_estimate.md").read_text()
    assert "ViT-B/16-384" in md and "int8, fp32 recipe" in md and "(1.56x)" in md
    assert main(["--artifacts", str(small_build[0]["fp32"].parent), "--out", str(tmp_path)]) == 0
    assert "m_int8.onnx (int8 Linear, fp16 attention, fp16 around)" in (tmp_path / "plan_estimate.md").read_text()
