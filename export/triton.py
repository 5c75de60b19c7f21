"""``make triton``: a Triton Inference Server model repository for a vitrt plan.

    triton/<model>/config.pbtxt        platform tensorrt_plan, max_batch_size from the profile,
                                       dynamic batching, I/O names, types and dims from the metadata
    triton/<model>/1/model.plan        the plan (hard link when possible, else a copy)
    triton/<model>/vitrt.json          the plan's sidecar, for provenance (Triton ignores it)

Serve with ``tritonserver --model-repository triton`` on a machine with the same GPU and TensorRT
version the plan was built with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from vitrt.errors import ArtifactError, VitrtError
from vitrt.artifacts import sidecar_path
from vitrt.metadata import Metadata

from vitrt.atomic import atomic_path, write_bytes, write_json

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64"}


def _dims(shape) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape[1:]) + " ]"  # without the batch dimension


def config_pbtxt(meta: Metadata, model_name: str, instances: int = 1, queue_delay_us: int = 2000) -> str:
    data = meta.data
    batch = data["batch"]
    preferred = sorted({b for b in (batch.get("opt", 1), batch["max"] // 2, batch["max"]) if 1 <= b <= batch["max"]})
    lines = [f'name: "{model_name}"', 'platform: "tensorrt_plan"', f"max_batch_size: {int(batch['max'])}", "input ["]
    inp = data["input"]
    lines += ["  {", f'    name: "{inp["name"]}"', f"    data_type: {TRITON_TYPES[inp['dtype']]}",
              f"    dims: {_dims(inp['shape'])}", "  }", "]", "output ["]
    outs = []
    for name, spec in data["outputs"].items():
        outs.append("\n".join(["  {", f'    name: "{name}"', f"    data_type: {TRITON_TYPES[spec['dtype']]}",
                               f"    dims: {_dims(spec['shape'])}", "  }"]))
    lines += [",\n".join(outs), "]"]
    lines += ["dynamic_batching {", f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
              f"  max_queue_delay_microseconds: {int(queue_delay_us)}", "}",
              "instance_group [", "  {", f"    count: {int(instances)}", "    kind: KIND_GPU", "  }", "]"]
    return "\n".join(lines) + "\n"


def write_repository(plan: Path, repo: Path, model_name: str | None = None, instances: int = 1) -> Path:
    """Write the model repository for ``plan``; returns the model folder."""
    plan = Path(plan)
    if not plan.is_file():
        raise ArtifactError(f"plan {plan} does not exist; build it with `make engine` on a GPU machine")
    meta = Metadata.from_json_file(sidecar_path(plan))
    if "plan" not in meta.data:
        raise ArtifactError(f"{plan}.json is not a plan sidecar; rebuild the plan with `make engine`")
    if meta.data["plan"].get("flavour", "tensorrt") != "tensorrt":
        raise ArtifactError(f"{plan.name} is a {meta.data['plan']['flavour']} plan; Triton's tensorrt_plan backend "
                            "runs full TensorRT plans only. Build one on the serving GPU: `make engine TRT=tensorrt`")
    name = model_name or "vitrt_" + plan.stem
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    target = folder / "1" / "model.plan"
    with atomic_path(target) as tmp:
        try:
            os.link(plan, tmp)
        except OSError:
            shutil.copyfile(plan, tmp)
    write_json(folder / "vitrt.json", meta.data)
    write_bytes(folder / "config.pbtxt", config_pbtxt(meta, name, instances).encode())
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.triton", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Write a Triton Inference Server model repository for a vitrt plan.")
    p.add_argument("--plan", type=Path, default=Path("artifacts/b16_384.plan"), help="the plan (default: %(default)s)")
    p.add_argument("--repo", type=Path, default=Path("triton"), help="model repository folder (default: %(default)s)")
    p.add_argument("--name", default=None, help="model name (default: vitrt_<plan stem>)")
    p.add_argument("--instances", type=int, default=1, help="model instances per GPU (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        folder = write_repository(args.plan, args.repo, args.name, args.instances)
    except VitrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {folder}/config.pbtxt and {folder}/1/model.plan; serve with: "
          f"tritonserver --model-repository {args.repo}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
