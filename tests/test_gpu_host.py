"""The tests that depend on whether the host has a GPU, run again as a GPU host would run them
(tests/simulated_gpu_host.py): each must state its condition and hold on both kinds of host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Every test whose outcome depends on the host: GPU count, nvidia-smi (the Makefile's TensorRT
#: install), the ONNX Runtime providers, the TensorRT flavour `auto` picks. (test_bench_end_to_end's
#: peer name comes from bench.torch_device(), the same call the benchmark makes: not rerun here.)
HOST_DEPENDENT = [
    "tests/test_tensorrt_cpu.py::test_engine_on_plan_without_gpu",
    "tests/test_tensorrt_build.py::test_the_real_runtime_judges_a_plan_for_this_machine",
    "tests/test_tensorrt_build.py::test_every_precision_is_a_real_plan",
    "tests/test_tensorrt_build.py::test_make_engine_builds_rtx_plans_and_plan_no_skips_them",
    "tests/test_make_and_triton.py::test_make_engine_without_full_tensorrt",
    "tests/test_precision.py::test_builds_all_and_logs",
    "tests/test_corpus.py::test_engine_arguments",
]

NVIDIA_SMI = """#!/bin/sh
echo "| NVIDIA-SMI 580.95.05   Driver Version: 580.95.05   CUDA Version: 13.0 |"
"""


@pytest.mark.slow
def test_host_dependent_tests_hold_on_a_simulated_gpu_host(tmp_path):
    if os.environ.get("VITRT_SIMULATED_GPU_HOST"):
        pytest.skip("already inside the simulation")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VITRT_SKIP_GPU": "1",
           "VITRT_SIMULATED_GPU_HOST": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "simulated_gpu_host", "-p", "no:cacheprovider",
                           *HOST_DEPENDENT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert f"{len(HOST_DEPENDENT)} passed" in proc.stdout, tail  # none skipped: each ran as on a GPU host
