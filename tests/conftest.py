"""Shared fixtures: small random ViTs and their ONNX artifacts, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A small ViT with the real model's contract (384x384 input, patch 16, 1000 classes): exports in ~3 s.
SMALL_KWARGS = {"depth": 2, "embed_dim": 64, "num_heads": 2}
MODEL = "vit_base_patch16_384.augreg_in21k_ft_in1k"


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="session")
def small_model():
    from export.weights import load_model

    model, provenance = load_model(MODEL, "random", seed=0, model_kwargs=SMALL_KWARGS)
    return model, provenance


def export_small(path: Path, small_model, **kw) -> Path:
    from export.onnx_export import export_onnx

    model, provenance = small_model
    export_onnx(model, path, model_name=MODEL, provenance=provenance, model_kwargs=SMALL_KWARGS, log=_quiet, **kw)
    return path


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory, small_model) -> Path:
    """uint8 NHWC artifact of the small ViT, max_batch 4 (so that batch splitting is exercised)."""
    return export_small(tmp_path_factory.mktemp("small") / "small.onnx", small_model, max_batch=4)


@pytest.fixture(scope="session")
def small_onnx_nchw(tmp_path_factory, small_model) -> Path:
    return export_small(tmp_path_factory.mktemp("small_nchw") / "small_nchw.onnx", small_model,
                        input_format="float32", verify=True)


def build_opts(out: Path, **kw):
    """BuildOptions for the small ViT, with the toy model's gate (export.gate.TOY_VIT_GATE)."""
    from export.build import BuildOptions
    from export.gate import TOY_VIT_GATE

    kw.setdefault("gate", TOY_VIT_GATE)
    return BuildOptions(weights="random", model_kwargs=SMALL_KWARGS, output_dir=out, name="m", **kw)


@pytest.fixture(scope="session")
def small_build(tmp_path_factory):
    """`make engine PRECISION=all CALIB_DIR=builtin TRT=tensorrt-rtx` on the small ViT: fp32/fp16/int8/fp8
    ONNX and real TensorRT-RTX plans of each (about 15 s; no plans without tensorrt_rtx). (paths, log)."""
    from export.build import build

    out = tmp_path_factory.mktemp("small_build")
    logs: list[str] = []
    # TensorRT-RTX named: on a GPU host with full TensorRT, auto would pick that one (tests/test_tensorrt_gpu.py)
    paths = build(build_opts(out, precision="all", calib_dir="builtin", trt="tensorrt-rtx"), log=logs.append)
    return paths, logs


def _int8_cpu_with(small_build, tmp_path_factory, recipe: str) -> Path:
    import shutil

    from export.build import build

    out = tmp_path_factory.mktemp(f"{recipe}_int8_cpu")
    fp32 = small_build[0]["fp32"]
    for name in (fp32.name, fp32.name + ".parity.json", "m.reference.npz"):
        shutil.copy(fp32.with_name(name), out / name)
    return build(build_opts(out, precision="int8-cpu", calib_dir="builtin", plan="no", cpu_recipe=recipe),
                 log=lambda m: None)["int8-cpu"]


@pytest.fixture(scope="session")
def ort_int8_cpu(small_build, tmp_path_factory) -> Path:
    """The small ViT's int8-cpu made with ``--cpu-recipe ort`` (ONNX Runtime's quantizer, int8 attention
    in export/cpu_attention.py's layout: the recipe before 2026-12-03), from a copy of small_build's fp32."""
    return _int8_cpu_with(small_build, tmp_path_factory, "ort")


@pytest.fixture(scope="session")
def modelopt_int8_cpu(small_build, tmp_path_factory) -> Path:
    """The small ViT's int8-cpu made with ``--cpu-recipe modelopt`` (ModelOpt int8 on the Linear MatMuls,
    FP32 around, SmoothQuant where a layer has outliers), from a copy of small_build's fp32."""
    return _int8_cpu_with(small_build, tmp_path_factory, "modelopt")


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    from export.images import builtin_photos

    return builtin_photos()


@pytest.fixture(scope="session")
def skimage_dir() -> Path:
    from export.images import skimage_data_dir

    return skimage_data_dir()


#: The files that take longest (measured, `--durations`: the full model's fixture alone is 4-6 min on 2
#: cores, the real-weights recipes 3 min), first: with `make test`'s two processes (--dist loadfile hands out files in collection order)
#: the long ones then run beside the short ones rather than alone at the end.
SLOW_FIRST = ("test_full_model.py", "test_real_weights.py", "test_batch.py", "test_gpu_host.py", "test_kill.py", "test_tensorrt_build.py",
              "test_make_and_triton.py", "test_benchmarks.py")


def pytest_collection_modifyitems(config, items):
    """The slow files first (SLOW_FIRST); tests marked gpu skip cleanly on machines without an NVIDIA GPU."""
    from vitrt.cuda import gpu_count

    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise

    if gpu_count() > 0 and not os.environ.get("VITRT_SKIP_GPU"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found by cudaGetDeviceCount)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
