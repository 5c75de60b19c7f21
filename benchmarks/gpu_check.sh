#!/usr/bin/env bash
# Every GPU-side check, in one go, on a GPU machine as it comes (system python with torch, timm, onnx,
# cuda-python; no TensorRT, no network): see benchmarks/gpu_check.py for the list. Writes
# reports/gpu/<gpu>.json and exits non-zero when a check fails.
#
# TensorRT-RTX (95 MB of wheels) travels in chunks of at most 64 MiB, made here by
# benchmarks/gpu_payload.sh into .gpu_payload/1 and .gpu_payload/2. With the device tool, two calls
# in a row (the machine stays warm between them):
#   run(carry=[".gpu_payload/1"], command="benchmarks/gpu_check.sh --stash")
#   run(carry=[".gpu_payload/2"], command="benchmarks/gpu_check.sh")
# --stash only copies the chunks it finds to $VITRT_PAYLOAD (default /tmp/vitrt-payload). Without
# --stash the chunks are joined, the wheels installed under $VITRT_PAYLOAD/site, then the checks run.
# Any other arguments go to benchmarks/gpu_check.py (e.g. --budget-s 300).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PAYLOAD=${VITRT_PAYLOAD:-/tmp/vitrt-payload}
mkdir -p "$PAYLOAD"
for part in .gpu_payload/*/*; do
  [ -f "$part" ] && cp "$part" "$PAYLOAD/"
done
if [ "${1:-}" = "--stash" ]; then
  ls -la "$PAYLOAD"
  exit 0
fi
if ls "$PAYLOAD"/*.part-* >/dev/null 2>&1; then
  for first in "$PAYLOAD"/*.part-aa; do
    whl="${first%.part-aa}"
    cat "$whl".part-* > "$whl"
  done
fi
if ls "$PAYLOAD"/*.whl >/dev/null 2>&1; then
  if (cd "$PAYLOAD" && sha256sum -c SHA256SUMS >/dev/null); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$PAYLOAD/site" \
      "$PAYLOAD"/*.whl && export PYTHONPATH="$PAYLOAD/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check.sh: the TensorRT-RTX wheels in $PAYLOAD do not match SHA256SUMS (a chunk missing?)" >&2
  fi
fi
exec "$PY" -m benchmarks.gpu_check "$@"
