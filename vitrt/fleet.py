"""One artifact set for a fleet: which file of ``artifacts/`` this machine should run.

    vitrt.Engine("artifacts/")      # the best artifact here; Engine.path says which, the log says why
    vitrt serve artifacts/          # the same rule

The rule, in one function (:func:`choose`), driven by a :class:`Machine` that tests can fake:

1. With an NVIDIA GPU: a plan that runs on this GPU, fastest precision first (fp8, int8, fp16, fp32):
   full TensorRT built for this compute capability, or TensorRT-RTX with this GPU among its targets,
   and the TensorRT flavour that built it installed here at the same version. Then the ONNX on ONNX
   Runtime's CUDA provider (fp16, then fp32).
2. Without one: ``NAME_int8_cpu.onnx``, then the fp32 ONNX. :func:`cpu_backend` says which runtime
   runs it: OpenVINO where it is installed and the CPU has int8 dot-product instructions (AVX-512 VNNI,
   AMX), ONNX Runtime otherwise (docs/benchmarks.md has the measurements behind the rule).

Only published artifacts count (their parity report beside them: `make engine` renames the report in
before the artifact); a folder with several artifact sets needs ``name``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path

from .artifacts import onnx_path, parity_path, plan_path, sidecar_path
from .errors import ArtifactError

log = logging.getLogger("vitrt")

PLAN_ORDER = ("fp8", "int8", "fp16", "fp32")
FLAVOUR_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the rule needs to know about a machine."""

    gpu: dict | None  # {"name", "compute_capability"} of the device to use, None without a GPU
    flavours: dict[str, str]  # installed TensorRT flavour -> version
    providers: tuple[str, ...]  # ONNX Runtime providers present
    cpu_isa: tuple[str, ...] = ()  # vitrt.cpu.CpuInfo.isa
    openvino: str | None = None  # the installed OpenVINO's version

    @classmethod
    def here(cls, device: int = 0) -> "Machine":
        from .cuda import device_properties, gpu_count

        gpu = device_properties(device) if gpu_count() > device else None
        flavours = {}
        for flavour, module in FLAVOUR_MODULES.items():
            if importlib.util.find_spec(module) is not None:
                try:
                    flavours[flavour] = importlib.import_module(module).__version__
                except Exception:  # a broken install: as if absent
                    continue
        try:
            import onnxruntime

            providers = tuple(onnxruntime.get_available_providers())
        except ImportError:
            providers = ()
        from .backends.openvino import openvino_version
        from .cpu import read_cpuinfo

        return cls(gpu=gpu, flavours=flavours, providers=providers, cpu_isa=tuple(read_cpuinfo().isa),
                   openvino=openvino_version())


def artifact_sets(folder: Path) -> list[str]:
    """The NAMEs of the artifact sets in ``folder`` (each build writes NAME.reference.npz)."""
    names = sorted(p.name[: -len(".reference.npz")] for p in folder.glob("*.reference.npz"))
    return names or sorted(p.stem for p in folder.glob("*.onnx") if "_" not in p.stem)


def _plan_runs_here(plan: Path, machine: Machine) -> str | None:
    """Why ``plan`` runs on ``machine`` (a sentence), or None."""
    import json

    try:
        info = json.loads(sidecar_path(plan).read_text()).get("plan") or {}
    except (OSError, ValueError):
        return None
    flavour = info.get("flavour", "tensorrt")
    have = machine.flavours.get(flavour)
    if have is None or ".".join(str(info.get("tensorrt")).split(".")[:3]) != ".".join(have.split(".")[:3]):
        return None
    cc = machine.gpu["compute_capability"]
    if flavour == "tensorrt" and str(info.get("compute_capability")) == cc:
        return f"full TensorRT {have} plan built for compute capability {cc}"
    if flavour == "tensorrt-rtx" and cc in (info.get("targets") or []):
        return f"TensorRT-RTX {have} plan whose targets include sm_{cc.replace('.', '')}"
    return None


def choose(folder: str | os.PathLike, machine: Machine | None = None, name: str | None = None) -> tuple[Path, str]:
    """(artifact, reason): the best published artifact in ``folder`` for ``machine`` (default: here)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{os.fspath(folder)!r} is not a folder; expected the artifacts/ folder `make engine` writes")
    names = artifact_sets(folder)
    if name is None:
        if len(names) != 1:
            raise ArtifactError(f"{os.fspath(folder)!r} holds {len(names)} artifact sets ({', '.join(names) or 'none'}); "
                                "expected one, or name=... (--model-name) to pick one; build them with `make engine`")
        name = names[0]
    machine = machine if machine is not None else Machine.here()
    published = lambda p: p.is_file() and parity_path(p).is_file()  # noqa: E731
    tried = []
    if machine.gpu is not None:
        for precision in PLAN_ORDER:
            plan = plan_path(folder, name, precision)
            if published(plan):
                why = _plan_runs_here(plan, machine)
                if why:
                    return plan, f"{machine.gpu['name']}: {why}"
                tried.append(plan.name)
        if "CUDAExecutionProvider" in machine.providers:
            for precision in ("fp16", "fp32"):
                path = onnx_path(folder, name, precision)
                if published(path):
                    return path, (f"{machine.gpu['name']}: no plan here runs on it ({', '.join(tried) or 'none built'}); "
                                  f"{precision} ONNX on ONNX Runtime's CUDA provider")
    where = "no NVIDIA GPU" if machine.gpu is None else f"{machine.gpu['name']} without a usable plan or CUDA provider"
    for precision, what in (("int8-cpu", "the INT8 CPU variant (its CPU runtime: vitrt.fleet.cpu_backend)"),
                            ("fp32", "the fp32 ONNX (its CPU runtime: vitrt.fleet.cpu_backend)")):
        path = onnx_path(folder, name, precision)
        if published(path):
            return path, f"{where}: {what}"
    raise ArtifactError(f"{os.fspath(folder)!r} has no published artifact of {name!r} that runs here ({where}); "
                        "expected NAME.onnx (or NAME_int8_cpu.onnx, or a plan for this GPU) with its parity report: "
                        "`make engine`")


#: The CPUs where OpenVINO ran vitrt's CPU artifacts faster than ONNX Runtime (docs/benchmarks.md, "CPU
#: peers"): on AVX-512 VNNI (Ice Lake) int8-cpu 1.44-1.57x and fp32 1.11-1.27x; on AVX2 alone int8-cpu
#: 0.49-0.70x and fp32 0.85-1.07x. AMX has not been measured: OpenVINO is chosen there for its AMX int8
#: kernels (oneDNN brgemm), an expectation to check with `make bench`.
OPENVINO_ISA = ("AVX-512 VNNI", "AMX-INT8")
OPENVINO_PRECISIONS = ("int8-cpu", "fp32")


def cpu_backend(machine: Machine, precision: str) -> tuple[str, str]:
    """("openvino" | "onnxruntime", reason): the runtime for a CPU ``.onnx`` artifact of ``precision``."""
    fast = [i for i in OPENVINO_ISA if i in machine.cpu_isa]
    if precision not in OPENVINO_PRECISIONS:
        return "onnxruntime", f"{precision} artifact: OpenVINO is chosen for {' and '.join(OPENVINO_PRECISIONS)} only"
    if not fast:
        return "onnxruntime", f"this CPU has none of {', '.join(OPENVINO_ISA)}, where OpenVINO measured faster"
    if machine.openvino is None:
        return "onnxruntime", f"this CPU has {fast[0]}, where OpenVINO measured faster, but openvino is not installed"
    return "openvino", f"this CPU has {fast[0]}: OpenVINO {machine.openvino} measured faster than ONNX Runtime there"
