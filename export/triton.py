"""``make triton``: the model repository ``vitrt serve`` runs, with the artifact inside it, for NVIDIA's
Triton containers (the layout and what has run where: docs/serving.md).

    triton/<NAME>/config.pbtxt     Python backend, image bytes in, logits/embedding out, bounded queue
    triton/<NAME>/labels.txt       class names (Triton's classification extension)
    triton/<NAME>/1/model.py       vitrt.Engine behind the wire contract (vitrt/serving/triton_model.py)
    triton/<NAME>/1/<artifact>     the artifact, its report, sidecar and reference file (hard links)

In the container: ``pip install 'vitrt[gpu]' 'numpy<2'`` (or ``vitrt[tensorrt]`` for a plan), then
``tritonserver --model-repository triton``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitrt.errors import VitrtError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.triton", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                   help="artifacts folder; the best file in it for this machine is used (default: %(default)s)")
    p.add_argument("--artifact", type=Path, default=None, help="this artifact instead (default: none)")
    p.add_argument("--precision", default=None,
                   help="the plan of this precision from --artifacts, e.g. int8 (default: none)")
    p.add_argument("--repo", type=Path, default=Path("triton"), help="model repository folder (default: %(default)s)")
    p.add_argument("--name", default=None, help="model name (default: the artifact set's NAME)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default: %(default)s)")
    args = p.parse_args(argv)
    from vitrt.artifacts import plan_path
    from vitrt.fleet import artifact_sets, choose
    from vitrt.serving.repository import write_repository

    try:
        artifact = args.artifact
        if artifact is None and args.precision:
            names = artifact_sets(args.artifacts) if args.artifacts.is_dir() else []
            artifact = plan_path(args.artifacts, args.name or (names[0] if names else "b16_384"), args.precision)
            if not artifact.is_file():
                raise VitrtError(f"{artifact} does not exist; expected a plan built by `make engine PRECISION={args.precision}`")
        if artifact is None:
            artifact, why = choose(args.artifacts, name=args.name)
            print(f"chose {artifact.name}: {why}")
        folder = write_repository(artifact, args.repo, args.name, copy=True, instances=args.instances)
    except VitrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {folder} (serving {artifact.name}); serve with `tritonserver --model-repository {args.repo}` "
          "where vitrt and numpy < 2 are installed, or `vitrt serve`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
