"""On an NVIDIA GPU (skipped elsewhere): vitrt's CUDA helpers, and TensorRT plans built and compared
with ONNX Runtime (CPU) and PyTorch. `benchmarks/gpu_check.sh` runs these with the rest of the GPU checks."""

from __future__ import annotations

import numpy as np
import pytest

import vitrt

pytestmark = pytest.mark.gpu


def test_cuda_buffers_copies_stream_and_graph():
    from vitrt import cuda

    stream = cuda.Stream()
    n = 1 << 20
    host_in, host_out = cuda.HostBuffer(n, np.uint8), cuda.HostBuffer(n, np.uint8)
    dev = cuda.DeviceBuffer(n)
    host_in.array[:] = np.arange(n, dtype=np.uint64).astype(np.uint8)
    cuda.memcpy_htod_async(dev, host_in, n, stream)
    cuda.memcpy_dtoh_async(host_out, dev, n, stream)
    stream.synchronize()
    np.testing.assert_array_equal(host_out.array, host_in.array)
    # a captured graph of the two copies replays them
    host_in.array[:] = 7
    graph = cuda.Graph(stream, lambda s: (cuda.memcpy_htod_async(dev, host_in, n, s),
                                          cuda.memcpy_dtoh_async(host_out, dev, n, s)))
    graph.launch()
    stream.synchronize()
    assert (host_out.array == 7).all()
    for obj in (graph, host_in, host_out, dev, stream):
        obj.close()


def _tensorrt():
    return pytest.importorskip("tensorrt")


@pytest.fixture(scope="module")
def small_plans(tmp_path_factory):
    _tensorrt()
    from conftest import build_opts
    from export.build import build

    out = tmp_path_factory.mktemp("plans")
    return build(build_opts(out, precision="fp16,int8", calib_dir="builtin", plan="yes", trt="tensorrt"))


@pytest.mark.parametrize("precision, cos", [("fp16", 0.999), ("int8", 0.98)])
def test_small_plan_matches_onnx_runtime(small_plans, photos, precision, cos):
    """The plan and ONNX Runtime CPU run the same graph: FP16 differs by kernel rounding only (cosine
    >= 0.999, as the fp16 gate); INT8 kernels may round activations differently at the Q/DQ boundaries,
    0.98 allows one quantization step on a few percent of values."""
    onnx_path, plan = small_plans[precision], small_plans[f"plan_{precision}"]
    with vitrt.Engine(onnx_path, providers=["CPUExecutionProvider"]) as ref, vitrt.Engine(plan) as trt:
        a, b = ref.embed(photos), trt.embed(photos)
        c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert c.min() >= cos
        if precision == "fp16":  # int8's near-tied random logits may flip top-1 at Q/DQ rounding: cosine says it
            assert ref.predict(photos[0])[0].index == trt.predict(photos[0])[0].index


def test_plan_graphs_replay_right_after_shape_changes(small_plans):
    """Batches 3, 1, 3, 1, 3 with new data each time, graphs on vs off: a graph replayed on another
    shape's setup would give stale rows (errors of O(1)); FP16 kernels agree to rounding (1e-2 abs)."""
    from benchmarks.gpu_check import a_b_a

    plan = small_plans["plan_fp16"]
    assert a_b_a(plan) <= 1e-2
    with vitrt.Engine(plan) as g:
        g.infer(np.zeros((3, 384, 384, 3), np.uint8))
        g.infer(np.zeros((3, 384, 384, 3), np.uint8))
        assert 3 in g.backend.graphs


def test_rtx_plan_end_to_end_on_this_gpu(tmp_path):
    """A TensorRT-RTX plan built for this GPU runs: parity gate (vitrt verify) and A->B->A graphs."""
    trt = pytest.importorskip("tensorrt_rtx")
    from benchmarks.gpu_check import a_b_a
    from conftest import build_opts
    from export.build import build
    from vitrt.cuda import device_properties

    cc = device_properties(0)["compute_capability"]
    if "SM" + cc.replace(".", "") not in trt.ComputeCapability.__members__:
        pytest.skip(f"TensorRT-RTX does not run on compute capability {cc} (an H100/H200 is 9.0)")
    built = build(build_opts(tmp_path, precision="fp16", plan="yes", trt="tensorrt-rtx",
                             targets="sm" + cc.replace(".", "")))
    with vitrt.Engine(built["plan_fp16"]) as e:
        assert e.verify()["passed"]
    assert a_b_a(built["plan_fp16"]) <= 1e-2


def test_plan_errors(small_plans, tmp_path):
    import shutil

    plan = small_plans["plan_fp16"]
    broken = tmp_path / "m.plan"
    shutil.copy(plan, broken)
    shutil.copy(plan.with_name(plan.name + ".json"), tmp_path / "m.plan.json")
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    with pytest.raises(vitrt.ArtifactError, match="does not match its sidecar"):
        vitrt.Engine(broken)


@pytest.mark.slow
def test_full_plan_fp16(tmp_path_factory, photos):
    _tensorrt()
    from export.build import BuildOptions, build

    out = tmp_path_factory.mktemp("full_plan")
    built = build(BuildOptions(weights="random", output_dir=out, precision="fp16", plan="yes", trt="tensorrt"))
    with vitrt.Engine(built["plan_fp16"]) as e:
        assert e.embed(photos[0]).shape == (768,) and len(e.predict(photos[:2])) == 2
