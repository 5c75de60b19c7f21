"""``python -m export``: build vitrt's artifacts (the front end of ``make engine``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitrt.errors import VitrtError

from . import DEFAULT_MODEL


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export timm's ViT-B/16-384 to ONNX (fp32, verified against PyTorch) with vitrt metadata.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model and weights")
    g.add_argument("--model", default=DEFAULT_MODEL, help="timm model name (default: %(default)s)")
    g.add_argument("--weights", default="hub", metavar="hub|random|PATH",
                   help="hub: timm's pretrained weights; random: seeded random init (tests, smoke builds); "
                        "PATH: a local .safetensors/.pth/.bin checkpoint (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: %(default)s)")
    g.add_argument("--model-kwargs", type=json.loads, default=None, metavar="JSON",
                   help="extra timm.create_model kwargs, e.g. '{\"depth\": 2}' for a small test ViT (default: none)")
    g = p.add_argument_group("graph")
    g.add_argument("--output-dir", type=Path, default=Path("artifacts"), help="where artifacts go (default: %(default)s)")
    g.add_argument("--name", default="b16_384", help="artifact base name: NAME.onnx, NAME_fp16.onnx, ... (default: %(default)s)")
    g.add_argument("--input-format", choices=("uint8", "float32"), default="uint8",
                   help="uint8: uint8 NHWC image, normalized in the graph; float32: normalized float NCHW "
                        "(default: %(default)s)")
    g.add_argument("--tokens", action="store_true", help="also output the [N, 577, 768] token features (default: off)")
    g.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 18 (default: %(default)s)")
    g.add_argument("--max-batch", type=int, default=32,
                   help="largest batch the runtime sends at once; larger ones are split (default: %(default)s)")
    g = p.add_argument_group("build")
    g.add_argument("--force", action="store_true", help="rebuild even when an up-to-date artifact exists (default: off)")
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
