"""``vitrt``: the runtime's command line (``vitrt predict``, ``vitrt info``, ``vitrt verify``)."""

from __future__ import annotations

import argparse
import json
import os
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
                    help="comma-separated ONNX Runtime providers, .onnx only (default: the best present)")
    pr.add_argument("--device", type=int, default=None, metavar="N",
                    help="GPU index, for a .plan or an .onnx on the CUDA/TensorRT provider (default: GPU 0 where "
                         "a GPU runs it; none on a CPU)")
    inf = sub.add_parser("info", help="describe an artifact", description="Describe an artifact from its vitrt "
                         "metadata: model, precision, I/O, batch, and for a plan its TensorRT flavour and targets.")
    inf.add_argument("path", type=Path, metavar="PATH", help="a .onnx artifact, a .plan or its .plan.json")
    inf.add_argument("--json", action="store_true", help="print the whole metadata as JSON (default: a summary)")
    ve = sub.add_parser("verify", help="check an artifact against its reference outputs on this machine",
                        description="Run the artifact on the parity set saved beside it (NAME.reference.npz) and "
                                    "apply the gate it passed at build time. Exit status 0 when it holds.")
    ve.add_argument("path", type=Path, metavar="ARTIFACT", help="a .onnx or .plan artifact")
    ve.add_argument("--reference", type=Path, default=None, metavar="NPZ",
                    help="reference outputs (default: the file the artifact's metadata names, beside it)")
    ve.add_argument("--providers", default=None, metavar="LIST",
                    help="comma-separated ONNX Runtime providers, .onnx only (default: the best present)")
    ve.add_argument("--device", type=int, default=None, metavar="N",
                    help="GPU index, for a .plan or an .onnx on the CUDA/TensorRT provider (default: GPU 0 where "
                         "a GPU runs it; none on a CPU)")
    ve.add_argument("--report", type=Path, default=None, metavar="JSON", help="also write the report here (default: none)")
    return p


def summary(path: Path) -> str:
    """A few lines that say what an artifact is."""
    from .artifacts import metadata_of

    meta = metadata_of(path)
    d = meta.data
    inp = d["input"]
    outs = ", ".join(f"{k} {v.get('dtype')} {v.get('shape')}" for k, v in d["outputs"].items())
    batch = d["batch"]
    lines = [f"artifact   {path}",
             f"model      {d['model'].get('name')} ({d.get('weights', {}).get('source')} weights)",
             f"precision  {d['precision']}",
             f"input      {inp.get('name')} {inp.get('dtype')} {inp.get('layout')} {inp.get('shape')}",
             f"outputs    {outs}",
             "batch      " + "/".join(str(batch[k]) for k in ("min", "opt", "max") if k in batch)]
    plan = d.get("plan")
    if isinstance(plan, dict):
        flavour = plan.get("flavour", "tensorrt")
        targets = plan.get("targets") or [plan.get("compute_capability")]
        lines += [f"flavour    {flavour} {plan.get('tensorrt')} (CUDA {plan.get('cuda_major') or '?'})",
                  f"targets    {', '.join('sm_' + str(t).replace('.', '') for t in targets if t)}"
                  + (f" (built on {plan['gpu']})" if plan.get("gpu") else " (built without a GPU)"),
                  f"plan       {plan.get('bytes', '?')} bytes, sha256 {str(plan.get('sha256'))[:16]}..."]
        parity = d.get("parity") or {}
        lines.append(f"parity     {parity.get('note') or parity.get('status', '?')}")
    return "\n".join(lines)


def _providers(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _run(args) -> int:
    if args.command == "info":
        from .artifacts import metadata_of

        try:
            exists = args.path.is_file()
        except (OSError, ValueError) as exc:
            raise VitrtError(f"{str(args.path)[:60]}... is not a usable path ({getattr(exc, 'strerror', None) or exc}); "
                             "expected a .onnx, .plan or .plan.json file") from None
        if not exists:
            raise VitrtError(f"{args.path} does not exist; expected a .onnx, .plan or .plan.json file")
        print(metadata_of(args.path).to_json() if args.json else summary(args.path))
        return 0
    from .engine import Engine

    if args.command == "verify":
        from .atomic import write_json
        from .verify import format_report

        with Engine(args.path, providers=_providers(args.providers), device=args.device) as engine:
            report = engine.verify(args.reference)
        print(format_report(report))
        if args.report is not None:
            write_json(args.report, report)
        print("PASSED: the gate holds on this machine" if report["passed"] else "FAILED: see the FAIL lines above")
        return 0 if report["passed"] else 1
    with Engine(args.engine, providers=_providers(args.providers), device=args.device) as engine:
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
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except VitrtError as exc:
        print(f"vitrt: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `vitrt predict ... | head -1`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
