"""The build's defaults, in one place (the CLI's help, the Makefile and the builder read them here).

Batch profile: batch 1 is what a single request needs; 8 is where TensorRT tunes its kernels (the
middle of what dynamic batching forms under load); 32 bounds the memory held for activations (about
0.8 GB of scratch for ViT-B/16-384 in FP16) and is past the point where an H100's throughput stops
growing for this 49-GMAC model. The ONNX artifacts' ``max_batch`` (what the runtime sends at once;
larger requests are split) is the same 32.
"""

MODEL = "vit_base_patch16_384.augreg_in21k_ft_in1k"
NAME = "b16_384"
OUTPUT_DIR = "artifacts"
OPSET = 18
PRECISION = "fp16"
CALIB_METHOD = "auto"  # export/precision.py AUTO_CALIBRATION: entropy for int8 and int8-cpu, max for fp8
#: int8/fp8 for TensorRT (export/precision.py RECIPES): "accurate" (Q/DQ on the Linear MatMuls, FP16
#: elsewhere), "smooth" (the same after SmoothQuant, for int8), "fp32" (the same Q/DQ with FP32 elsewhere,
#: 2026-12-01) or "fast" (ModelOpt's own placement)
QUANT_RECIPE = "accurate"
#: int8-cpu (export/precision.py CPU_RECIPES): "nncf" (NNCF's INT8 on the ONNX graph), "modelopt"
#: (ModelOpt int8 on the Linear MatMuls, FP32 elsewhere, SmoothQuant where a layer has outliers),
#: "smooth" (the same, every layer migrated) or "ort" (ONNX Runtime's quantizer with int8 attention,
#: before 2026-12-03)
CPU_RECIPE = "nncf"
CALIB_MAX = 512
MIN_BATCH, OPT_BATCH, MAX_BATCH_PLAN = 1, 8, 32
MAX_BATCH_ONNX = 32
WORKSPACE_GIB = 4.0
OPT_LEVEL = 3  # TensorRT's default; 5 searches longer for a few percent
#: TensorRT-RTX targets when TARGETS is not given: the RTX GPUs from Ampere on (RTX 30xx/A-series
#: sm_86, RTX 40xx/Ada sm_89, RTX 50xx/Blackwell sm_120). fp8 plans keep only the sm_89+ ones.
RTX_TARGETS = "sm86,sm89,sm120"
#: auto: full TensorRT where a GPU and TensorRT are present, else TensorRT-RTX (builds without a GPU).
TRT_FLAVOUR = "auto"
