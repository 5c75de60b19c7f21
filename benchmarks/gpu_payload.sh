#!/usr/bin/env bash
# Make .gpu_payload/{1,2}: TensorRT-RTX's wheels for the lent GPU machine's python (3.12, x86-64),
# the 95 MB libs wheel split so that no call carries more than 64 MiB. See benchmarks/gpu_check.sh.
#   benchmarks/gpu_payload.sh [PYTHON_VERSION]   (default: 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
RTX=$(.venv/bin/python -c "import tensorrt_rtx; print(tensorrt_rtx.__version__)" 2>/dev/null || echo 1.7.1.116)
rm -rf .gpu_payload && mkdir -p .gpu_payload/wheels .gpu_payload/1 .gpu_payload/2
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu_payload/wheels "tensorrt_rtx_cu13_libs==$RTX" "tensorrt_rtx_cu13_bindings==$RTX"
# the `tensorrt_rtx` module itself comes from an sdist: build it into a (pure Python) wheel here
python3 -m pip wheel -q --no-deps -w .gpu_payload/wheels "tensorrt-rtx-cu13==$RTX"
(cd .gpu_payload/wheels && sha256sum *.whl > SHA256SUMS)
libs=$(ls .gpu_payload/wheels/tensorrt_rtx_cu13_libs-*.whl)
split -b 48M -a 2 "$libs" ".gpu_payload/wheels/$(basename "$libs").part-"
mv .gpu_payload/wheels/*.part-aa .gpu_payload/1/
mv .gpu_payload/wheels/*.part-* .gpu_payload/wheels/tensorrt_rtx_cu13_bindings-*.whl \
  .gpu_payload/wheels/tensorrt_rtx_cu13-*.whl .gpu_payload/wheels/SHA256SUMS .gpu_payload/2/
rm -rf .gpu_payload/wheels
du -sh .gpu_payload/1 .gpu_payload/2
