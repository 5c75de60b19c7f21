#!/usr/bin/env bash
# Every GPU-side check present on this machine, in one go: vitrt's CUDA helpers (cuda-python), and,
# where TensorRT is installed, plan builds + parity + a short throughput run, then the `gpu` tests.
# Prints a summary, writes reports/gpu_check.json, exits non-zero when a check fails.
#   benchmarks/gpu_check.sh [--full] [--out reports/gpu_check.json]
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" -m benchmarks.gpu_check "$@"
