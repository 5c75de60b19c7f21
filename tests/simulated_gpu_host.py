"""pytest plugin (``-p simulated_gpu_host``): this machine as a GPU host looks to the tests, without a
GPU. ``vitrt.cuda`` says there is one H100 (gpu_count, device_properties, driver_version, replaced
before any vitrt module binds the names), and
tests/test_gpu_host.py puts an ``nvidia-smi`` that reports a CUDA 13 driver first on PATH, as the
Makefile reads it. Tests marked ``gpu`` are skipped (VITRT_SKIP_GPU): they need the real thing.
What this shows: the tests that depend on the host state it and hold on both kinds of host."""

import vitrt.cuda

vitrt.cuda.gpu_count = lambda: 1
vitrt.cuda.device_properties = lambda device=0: {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                                  "total_memory": 80 << 30}
vitrt.cuda.driver_version = lambda: "13.0"
