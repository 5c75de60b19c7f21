"""``vitrt``: the runtime's command line (``vitrt predict``, ``vitrt info``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import VitrtError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrt", description="Run vitrt artifacts (.onnx, .plan) on images.")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="top-k ImageNet classes for images",
                        description="Print the top-k classes of each image.")
    pr.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    pr.add_argument("--engine", required=True, type=Path, metavar="PATH", help="a .onnx or .plan artifact")
    pr.add_argument("--topk", type=int, default=5, help="classes per image (default: %(default)s)")
    pr.add_argument("--json", action="store_true", help="print JSON instead of text (default: text)")
    pr.add_argument("--providers", default=None, metavar="LIST",
                    help="comma-separated ONNX Runtime providers (default: the best present)")
    inf = sub.add_parser("info", help="print an artifact's metadata", description="Print an artifact's vitrt metadata as JSON.")
    inf.add_argument("path", type=Path, metavar="PATH", help="a .onnx artifact, a .plan or its .plan.json")
    return p


def _metadata(path: Path):
    from .metadata import Metadata

    if path.suffix == ".onnx":
        return Metadata.from_onnx(path)
    if path.suffix == ".plan":
        path = path.with_name(path.name + ".json")
    return Metadata.from_json_file(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            if not args.path.is_file():
                raise VitrtError(f"{args.path} does not exist; expected a .onnx, .plan or .plan.json file")
            print(_metadata(args.path).to_json())
            return 0
        from .engine import Engine

        providers = args.providers.split(",") if args.providers else None
        with Engine(args.engine, providers=providers) as engine:
            results = []
            for image in args.images:  # one at a time: a bad image names itself and stops the run
                results.append((image, engine.predict(image, topk=args.topk)))
        if args.json:
            print(json.dumps([{"image": str(img), "predictions": [p._asdict() for p in preds]}
                              for img, preds in results], indent=2))
        else:
            for img, preds in results:
                print(img)
                for p in preds:
                    print(f"  {p.prob:8.4f}  {p.index:4d}  {p.label}")
    except VitrtError as exc:
        print(f"vitrt: error: {exc}", file=sys.stderr)
        return 1
    return 0

