"""The fleet rule (vitrt.fleet.choose) on fake machines, and Engine("artifacts/") on this one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

import vitrt
from vitrt.errors import ArtifactError
from vitrt.fleet import Machine, choose

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
RTX4090 = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
CPU = ("CPUExecutionProvider",)
GPU_ORT = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _artifact(folder: Path, name: str, plan: dict | None = None, published: bool = True) -> Path:
    path = folder / name
    path.write_bytes(b"x")
    if published:
        path.with_name(name + ".parity.json").write_text("{}")
    if plan is not None:
        path.with_name(name + ".json").write_text(json.dumps({"plan": plan}))
    return path


@pytest.fixture
def fleet(tmp_path):
    (tmp_path / "b16_384.reference.npz").write_bytes(b"")
    for n in ("b16_384.onnx", "b16_384_fp16.onnx", "b16_384_int8.onnx", "b16_384_int8_cpu.onnx"):
        _artifact(tmp_path, n)
    _artifact(tmp_path, "b16_384.plan", {"flavour": "tensorrt", "tensorrt": "10.14.1.48", "compute_capability": "9.0"})
    _artifact(tmp_path, "b16_384_int8.plan", {"flavour": "tensorrt-rtx", "tensorrt": "1.7.1.116",
                                              "targets": ["8.6", "8.9", "12.0"]})
    return tmp_path


def test_a_gpu_takes_a_plan_that_runs_on_it(fleet):
    h100 = Machine(gpu=H100, flavours={"tensorrt": "10.14.1.50"}, providers=GPU_ORT)
    path, why = choose(fleet, h100)
    assert path.name == "b16_384.plan" and "full TensorRT 10.14.1.50 plan built for compute capability 9.0" in why
    ada = Machine(gpu=RTX4090, flavours={"tensorrt-rtx": "1.7.1.116", "tensorrt": "10.14.1.48"}, providers=GPU_ORT)
    path, why = choose(fleet, ada)  # the fp16 plan is for sm_90: the int8 one is the only plan that runs
    assert path.name == "b16_384_int8.plan" and "targets include sm_89" in why


def _plan(folder: Path, precision: str, estimate: dict | None) -> None:
    name = "b16_384.plan" if precision == "fp16" else f"b16_384_{precision}.plan"
    data = {"plan": {"flavour": "tensorrt", "tensorrt": "10.14.1.48", "compute_capability": "9.0"}}
    if estimate is not None:
        data["plan_estimate"] = {"speedup_vs_fp16": estimate}
    _artifact(folder, name)
    (folder / (name + ".json")).write_text(json.dumps(data))


@pytest.mark.parametrize("estimate, chosen", [
    ({"H100 SXM": 1.56, "L4": 1.42}, "b16_384_int8.plan"),  # faster on every GPU modelled: first
    ({"H100 SXM": 1.2, "L4": 0.95}, "b16_384.plan"),  # slower on one of them: fp16 first
    ({"H100 SXM": 0.35, "L4": 0.29}, "b16_384.plan"),  # the fp32-around recipe (export/plan_estimate.py)
    (None, "b16_384.plan"),  # built before vitrt estimated plans: not known to be faster
])
def test_an_int8_plan_goes_first_only_where_its_estimate_is_faster(tmp_path, estimate, chosen):
    (tmp_path / "b16_384.reference.npz").write_bytes(b"")
    _plan(tmp_path, "fp16", None)
    _plan(tmp_path, "int8", estimate)
    h100 = Machine(gpu=H100, flavours={"tensorrt": "10.14.1.48"}, providers=GPU_ORT)
    path, why = choose(tmp_path, h100)
    assert path.name == chosen, why
    assert ("estimated" in why) == (chosen != "b16_384.plan")


def test_a_gpu_without_a_usable_plan_takes_the_onnx_on_cuda(fleet):
    other_version = Machine(gpu=H100, flavours={"tensorrt": "10.15.0.1"}, providers=GPU_ORT)
    path, why = choose(fleet, other_version)
    assert path.name == "b16_384_fp16.onnx" and "CUDA provider" in why and "b16_384.plan" in why
    no_cuda_ep = Machine(gpu=H100, flavours={}, providers=CPU)
    path, why = choose(fleet, no_cuda_ep)
    assert path.name == "b16_384_int8_cpu.onnx" and "without a usable plan or CUDA provider" in why


def test_no_gpu_takes_int8_cpu_then_fp32(fleet):
    cpu = Machine(gpu=None, flavours={"tensorrt-rtx": "1.7.1.116"}, providers=CPU)
    assert choose(fleet, cpu)[0].name == "b16_384_int8_cpu.onnx"
    (fleet / "b16_384_int8_cpu.onnx.parity.json").unlink()  # not published (a killed build): not a choice
    path, why = choose(fleet, cpu)
    assert path.name == "b16_384.onnx" and why.startswith("no NVIDIA GPU")
    for p in fleet.glob("b16_384.onnx*"):
        p.unlink()
    with pytest.raises(ArtifactError, match="no published artifact of 'b16_384' that runs here.*make engine"):
        choose(fleet, cpu)


def test_several_sets_need_a_name(fleet):
    (fleet / "other.reference.npz").write_bytes(b"")
    _artifact(fleet, "other.onnx")
    cpu = Machine(gpu=None, flavours={}, providers=CPU)
    with pytest.raises(ArtifactError, match="holds 2 artifact sets \\(b16_384, other\\); expected one, or name="):
        choose(fleet, cpu)
    assert choose(fleet, cpu, name="other")[0].name == "other.onnx"


def test_engine_on_a_folder_runs_the_chosen_file(small_onnx, tmp_path, caplog, photos):
    shutil.copy(small_onnx, tmp_path / "m.onnx")
    (tmp_path / "m.onnx.parity.json").write_text("{}")
    (tmp_path / "m.reference.npz").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="vitrt"):
        with vitrt.Engine(tmp_path) as engine:
            assert engine.path == tmp_path / "m.onnx" and "the fp32 ONNX (its CPU runtime: vitrt.fleet.cpu_backend)" in engine.choice
            assert len(engine.predict(photos[0])) == 5
    assert "m.onnx chosen" in caplog.text
