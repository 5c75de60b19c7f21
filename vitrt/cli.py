"""``vitrt``: the runtime's command line (``vitrt predict``, ``vitrt info``, ``vitrt verify``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import InputError, VitrtError


def _batch_args(p) -> None:
    from .jobs.local import BATCH_SIZE, SHARD_SIZE, WORKERS

    p.add_argument("--workers", type=int, default=WORKERS, help="decoding threads, with -o (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per inference, with -o (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="rows per Parquet shard, with -o (default: %(default)s)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (`pip install 'vitrt[ray]'`): at ADDRESS, or with no ADDRESS the one this "
                        "machine belongs to, else a local one started for the job (default: off)")
    p.add_argument("--actors", type=int, default=None, help="Engine actors, with --ray (default: the cluster's CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a TTY (default: a bar on a TTY)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrt", description="Run vitrt artifacts (.onnx, .plan) on images.")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="top-k ImageNet classes for images",
                        description="Print the top-k classes of each image.")
    pr.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                    help="image files (JPEG, PNG, ...); with -o, one SRC: a folder, a glob or a list file")
    pr.add_argument("-o", "--output", type=Path, default=None, metavar="OUT",
                    help="run as a batch job into this Parquet dataset folder (default: print)")
    pr.add_argument("--logits", action="store_true", help="with -o, also write the logits (default: off)")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--engine", type=Path, metavar="PATH", help="a .onnx or .plan artifact, or an artifacts folder "
                     "(the best file in it for this machine) (default: none: --engine or --server is required)")
    _batch_args(pr)
    src.add_argument("--server", metavar="URL", help="a `vitrt serve` server, e.g. localhost:8000, or a gateway in "
                     "front of one, https://HOST (default: none)")
    pr.add_argument("--model-name", default="b16_384", help="the served model, with --server (default: %(default)s)")
    pr.add_argument("--ca-file", default=None, metavar="PEM",
                    help="with an https:// --server: the CA that signed its certificate (default: the system's CAs)")
    pr.add_argument("--cert-file", default=None, metavar="PEM",
                    help="with an https:// --server: a client certificate (default: none)")
    pr.add_argument("--key-file", default=None, metavar="PEM",
                    help="the client certificate's key, where it is not in --cert-file (default: none)")
    pr.add_argument("--basic-auth-file", type=Path, default=None, metavar="FILE",
                    help="a file holding USER:PASSWORD for a gateway's basic auth (kept out of the command line, "
                         "which other users can read) (default: none)")
    pr.add_argument("--topk", type=int, default=5, help="classes per image (default: %(default)s)")
    pr.add_argument("--json", action="store_true", help="print JSON instead of text (default: text)")
    pr.add_argument("--providers", default=None, metavar="LIST",
                    help="comma-separated ONNX Runtime providers, .onnx only (default: the best present)")
    pr.add_argument("--device", type=int, default=None, metavar="N",
                    help="GPU index, for a .plan or an .onnx on the CUDA/TensorRT provider (default: GPU 0 where "
                         "a GPU runs it; none on a CPU)")
    pr.add_argument("--backend", choices=("onnxruntime", "openvino"), default=None,
                    help="the runtime of an .onnx (default: ONNX Runtime with a GPU, else the faster one for this "
                         "CPU: vitrt.fleet.cpu_backend)")
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
    ve.add_argument("--backend", choices=("onnxruntime", "openvino"), default=None,
                    help="the runtime of an .onnx (default: ONNX Runtime with a GPU, else the faster one for this "
                         "CPU: vitrt.fleet.cpu_backend)")
    ve.add_argument("--report", type=Path, default=None, metavar="JSON", help="also write the report here (default: none)")
    em = sub.add_parser("embed", help="embeddings of a whole image collection into a Parquet dataset",
                        description="Embed every image under SRC (a folder, a glob or a list file) into the Parquet "
                                    "dataset OUT: resumable after kill -9, bad files in OUT/_errors.parquet.")
    em.add_argument("src", metavar="SRC", help="a folder (recursive), a glob, or a text file with one path per line")
    em.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="the dataset folder")
    em.add_argument("--engine", type=Path, default=Path("artifacts"),
                    help="an artifact or an artifacts folder (default: %(default)s: the best file for this machine)")
    _batch_args(em)
    sv = sub.add_parser("serve", help="serve an artifact on Triton Inference Server",
                        description="Start the real Triton Inference Server (the binary in nvidia-pytriton) serving one "
                                    "model: image files in (BYTES), logits, embedding and top-k labels out; the wire "
                                    "contract is docs/serving.md. Runs until SIGTERM/SIGINT, which drain in-flight requests.")
    sv.add_argument("path", type=Path, metavar="ARTIFACT_OR_DIR",
                    help="a .onnx or .plan, or an artifacts folder (the best file in it for this machine)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    sv.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    sv.add_argument("--grpc-port", type=int, default=8001,
                    help="gRPC port; 0: HTTP only (Triton cannot cap gRPC message sizes: docs/serving.md) "
                         "(default: %(default)s)")
    sv.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: %(default)s)")
    sv.add_argument("--model-name", default=None, help="served model name (default: the artifact set's NAME)")
    sv.add_argument("--max-queue-size", type=int, default=None,
                    help="requests waiting beyond this get 503 at once (default: vitrt/serving/repository.py)")
    sv.add_argument("--queue-timeout-ms", type=int, default=None,
                    help="a request that waited this long gets 503; 0: no limit (default: vitrt/serving/repository.py)")
    sv.add_argument("--queue-delay-us", type=int, default=None,
                    help="dynamic batching delay (default: vitrt/serving/repository.py)")
    sv.add_argument("--grace", type=int, default=30, help="seconds to drain in-flight requests on SIGTERM (default: %(default)s)")
    sv.add_argument("--max-image-bytes", type=int, default=None,
                    help="an encoded image larger than this gets 400 before it is decoded (default: "
                         "vitrt/serving/repository.py MAX_IMAGE_BYTES)")
    sv.add_argument("--triton-home", type=Path, default=None, metavar="PATH",
                    help="a Triton installation to run (NGC layout: bin/tritonserver, backends/python) (default: "
                         "$VITRT_TRITON_HOME, else /opt/tritonserver, else the one bundled in nvidia-pytriton)")
    sv.add_argument("--allow-vulnerable-triton", action="store_true",
                    help="bind a Triton release with known network-reachable CVEs to a non-loopback address; only "
                         "behind a gateway that authenticates clients and buffers request bodies (default: refused)")
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


def _basic_auth(path: Path | None) -> tuple[str, str] | None:
    if path is None:
        return None
    try:
        user, sep, password = path.read_text().strip().partition(":")
    except OSError as exc:
        raise InputError(f"--basic-auth-file {path}: {exc.strerror}; expected a readable file") from None
    if not sep or not user:
        raise InputError(f"--basic-auth-file {path} holds no USER:PASSWORD line; expected one")
    return user, password


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
    if args.command == "serve":
        return _serve(args)
    if args.command == "embed" or (args.command == "predict" and args.output is not None):
        return _batch(args)
    from .engine import Engine

    if args.command == "verify":
        from .atomic import write_json
        from .verify import format_report

        with Engine(args.path, providers=_providers(args.providers), device=args.device, backend=args.backend) as engine:
            report = engine.verify(args.reference)
        print(format_report(report))
        if args.report is not None:
            write_json(args.report, report)
        print("PASSED: the gate holds on this machine" if report["passed"] else "FAILED: see the FAIL lines above")
        return 0 if report["passed"] else 1
    if args.server:
        from .serving.client import Client

        runner = Client(args.server, args.model_name, ca_file=args.ca_file, cert_file=args.cert_file,
                        key_file=args.key_file, basic_auth=_basic_auth(args.basic_auth_file))
    else:
        runner = Engine(args.engine, providers=_providers(args.providers), device=args.device, backend=args.backend)
    with runner:
        results = []
        for image in args.images:  # one at a time: a bad image names itself and stops the run
            results.append((image, runner.predict(image, topk=args.topk)))
    if args.json:
        print(json.dumps([{"image": str(img), "predictions": [p._asdict() for p in preds]}
                          for img, preds in results], indent=2))
    else:
        for img, preds in results:
            print(img)
            for p in preds:
                print(f"  {p.prob:8.4f}  {p.index:4d}  {p.label}")
    return 0


def _batch(args) -> int:
    task = args.command
    if task == "predict":
        if len(args.images) != 1 or args.server:
            raise VitrtError(f"predict -o takes one SRC and --engine; got {len(args.images)} sources"
                             + (" and --server" if args.server else "") + ": expected `vitrt predict SRC -o OUT --engine ...`")
        src = args.images[0]
    else:
        src = args.src
    options = {"workers": args.workers, "batch_size": args.batch_size, "shard_size": args.shard_size,
               "progress": False if args.no_progress else None}
    if task == "predict":
        options.update(topk=args.topk, logits=args.logits)
    if args.ray is not None:
        from .jobs.on_ray import run_ray

        summary = run_ray(args.engine, src, args.output, task=task, actors=args.actors, address=args.ray or None,
                          **options)
    else:
        from .jobs.local import run
        from .engine import Engine

        with Engine(args.engine) as engine:
            summary = run(engine, src, args.output, task=task, **options)
    print(json.dumps(summary))
    return 0


def _serve(args) -> int:
    from .serving.server import serve

    path = args.path
    if path.is_dir():
        from .fleet import choose

        path, why = choose(path, name=args.model_name)
        print(f"vitrt serve: chose {path.name}: {why}", flush=True)
    elif not path.is_file():
        raise VitrtError(f"{path} does not exist; expected a .onnx or .plan artifact or an artifacts folder")
    config = {k: v for k, v in (("max_queue_size", args.max_queue_size), ("queue_timeout_ms", args.queue_timeout_ms),
                                ("queue_delay_us", args.queue_delay_us), ("max_image_bytes", args.max_image_bytes))
              if v is not None}
    return serve(path, model_name=args.model_name, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                 metrics_port=args.metrics_port, grace=args.grace, triton_home=args.triton_home,
                 allow_vulnerable_triton=args.allow_vulnerable_triton, log=lambda m: print(m, flush=True), **config)


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
