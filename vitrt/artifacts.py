"""Every file that makes up an artifact, named in one place.

    artifacts/b16_384.onnx                  fp32 ONNX (the source of every variant)
    artifacts/b16_384_fp16.onnx             precision variants: NAME_<precision>.onnx
    artifacts/b16_384_int8_cpu.onnx         the INT8 CPU variant (runs on ONNX Runtime or OpenVINO)
    artifacts/b16_384.plan                  TensorRT plan of the fp16 variant (the default plan)
    artifacts/b16_384_int8.plan             other plans say their precision
    artifacts/b16_384.plan.json             a plan's sidecar metadata
    artifacts/<artifact>.parity.json        the parity report it was published with
    artifacts/<artifact>.parity-failed.json the report of a variant that failed its gate (not published)
    artifacts/b16_384.reference.npz         parity inputs and PyTorch FP32 outputs (`vitrt verify`)
    artifacts/b16_384.plan.runtime-cache    TensorRT-RTX's JIT kernels for this plan on this GPU
"""

from __future__ import annotations

import os
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8", "fp8", "int8-cpu")
#: The precision whose plan is NAME.plan (the others are NAME_<precision>.plan).
DEFAULT_PLAN_PRECISION = "fp16"


def onnx_path(folder: str | os.PathLike, name: str, precision: str) -> Path:
    """NAME.onnx for fp32 (every variant's source), NAME_<precision>.onnx otherwise."""
    return Path(folder) / (f"{name}.onnx" if precision == "fp32" else f"{name}_{precision.replace('-', '_')}.onnx")


def plan_path(folder: str | os.PathLike, name: str, precision: str) -> Path:
    return Path(folder) / (f"{name}.plan" if precision == DEFAULT_PLAN_PRECISION else f"{name}_{precision}.plan")


def set_name(artifact: str | os.PathLike) -> str:
    """The artifact set's NAME of a file named by :func:`onnx_path` or :func:`plan_path`:
    ``b16_384`` for b16_384.onnx, b16_384_int8_cpu.onnx and b16_384_fp8.plan."""
    stem = Path(artifact).name.split(".")[0]
    for precision in PRECISIONS:
        suffix = "_" + precision.replace("-", "_")
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def sidecar_path(plan: str | os.PathLike) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def parity_path(artifact: str | os.PathLike, failed: bool = False) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + (".parity-failed.json" if failed else ".parity.json"))


def reference_path(folder: str | os.PathLike, name: str) -> Path:
    return Path(folder) / f"{name}.reference.npz"


def reference_for(artifact: str | os.PathLike, metadata: dict) -> Path:
    """The reference file an artifact's metadata names, beside the artifact."""
    from .errors import MetadataError

    ref = metadata.get("reference")
    if not isinstance(ref, dict) or not isinstance(ref.get("file"), str) or not ref["file"]:
        raise MetadataError(f"{Path(artifact).name} names no reference file in its metadata; expected "
                            "'reference': {'file': ...} (built by vitrt >= 0.2). Pass reference=PATH or rebuild "
                            "with `make engine`")
    return Path(artifact).with_name(Path(ref["file"]).name)


def runtime_cache_path(plan: str | os.PathLike, sha256: str) -> Path:
    """Where TensorRT-RTX's JIT runtime cache for ``plan`` lives: beside the plan when that folder is
    writable, else in ``$VITRT_CACHE_DIR`` (default ``~/.cache/vitrt``), keyed by the plan's sha256."""
    plan = Path(plan)
    if os.access(plan.parent, os.W_OK):
        return plan.with_name(plan.name + ".runtime-cache")
    root = Path(os.environ.get("VITRT_CACHE_DIR") or Path.home() / ".cache" / "vitrt")
    return root / f"{plan.stem}-{sha256[:16]}.runtime-cache"


def metadata_of(path: str | os.PathLike):
    """The :class:`Metadata` of a .onnx, a .plan (its sidecar) or a .plan.json."""
    from .errors import ArtifactError
    from .metadata import Metadata

    path = Path(path)
    if path.suffix == ".onnx":
        return Metadata.from_onnx(path)
    if path.suffix == ".plan":
        return Metadata.from_json_file(sidecar_path(path))
    if path.name.endswith(".plan.json"):
        return Metadata.from_json_file(path)
    raise ArtifactError(f"{os.fspath(path)!r} has suffix {path.suffix!r}; expected a .onnx, .plan or .plan.json file")
