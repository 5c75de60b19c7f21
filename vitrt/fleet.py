"""One artifact set for a fleet: which file of ``artifacts/`` this machine should run.

    vitrt.Engine("artifacts/")      # the best artifact here; Engine.path says which, the log says why
    vitrt serve artifacts/          # the same rule

The rule, in one function (:func:`choose`), driven by a :class:`Machine` that tests can fake:

1. With an NVIDIA GPU: a plan that runs on this GPU, the fastest first by :func:`plan_speed`: fp16, and
   ahead of it an int8 or fp8 plan only where its build's estimate (``plan_estimate`` in its sidecar,
   export/plan_estimate.py: TensorRT's rules and a roofline on each GPU it models) says it is faster
   than the fp16 plan on every one of them; fp32 last. Full TensorRT built for this compute capability,
   or TensorRT-RTX with this GPU among its targets, and the TensorRT flavour that built it installed
   here at the same version. Then the ONNX on ONNX Runtime's CUDA provider (fp16, then fp32).
2. Without one: ``NAME_int8_cpu.onnx``, then the fp32 ONNX. :func:`cpu_backend` says which runtime
   runs it: OpenVINO where it is installed and the CPU has the instructions its fast kernels for that
   artifact need (int8-cpu: AVX-512 VNNI, AMX or AVX-VNNI; fp32: AVX-512 VNNI or AMX), ONNX Runtime
   otherwise (docs/benchmarks.md has the measurements behind the rule).

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


def plan_speed(plan: Path, precision: str) -> tuple[float, str]:
    """(estimated throughput against the fp16 plan, why) of a published plan: fp16 1; int8/fp8 the
    lowest ``plan_estimate.speedup_vs_fp16`` its sidecar records (a plan without one, built before
    vitrt estimated plans, 0.99: not known to be faster, so after fp16); fp32 0 (always last)."""
    import json

    if precision == "fp16":
        return 1.0, "the fp16 plan"
    if precision == "fp32":
        return 0.0, "the fp32 plan"
    try:
        est = (json.loads(sidecar_path(plan).read_text()).get("plan_estimate") or {}).get("speedup_vs_fp16") or {}
        value = min(float(v) for v in est.values()) if est else None
    except (OSError, ValueError, TypeError):
        value = None
    if value is None:
        return 0.99, f"{precision} plan with no estimate against fp16 (built before vitrt estimated plans)"
    return value, f"{precision} plan estimated {value:.2f}x the fp16 plan's throughput (export/plan_estimate.py)"


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
        ranked = []
        for order, precision in enumerate(PLAN_ORDER):
            plan = plan_path(folder, name, precision)
            if published(plan):
                why = _plan_runs_here(plan, machine)
                if why:
                    speed, because = plan_speed(plan, precision)
                    # fp16 first on a tie: an int8/fp8 plan goes ahead only where it is estimated faster
                    ranked.append((-speed, precision != "fp16", order, plan, f"{machine.gpu['name']}: {why}; {because}"))
                else:
                    tried.append(plan.name)
        if ranked:
            *_, plan, why = min(ranked)
            return plan, why
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


#: OpenVINO's own requirement for running an int8 attention block (Q·Kᵀ, Softmax, softmax·V) as one
#: fused 8-bit kernel, its snippets MHA: ``is_supported_matmul`` in the CPU plugin's
#: src/plugins/intel_cpu/src/transformations/transformation_pipeline.cpp (``MainSnippets``) accepts an
#: i8/u8 MatMul only where oneDNN reports ``avx512_core_amx``, ``avx512_core_vnni`` or ``avx2_vnni``.
#: Elsewhere (AVX2 alone) OpenVINO runs each attention MatMul as its own int8 oneDNN MatMul and the
#: Softmax as a separate f32 node (tests/test_openvino_backend.py asserts both layouts).
OPENVINO_INT8_ATTENTION_ISA = ("AMX-INT8", "AVX-512 VNNI", "AVX-VNNI")

#: The CPUs where OpenVINO runs each CPU artifact (docs/benchmarks.md, "CPU peers", has the measurements):
#: - int8-cpu: where the CPU has 8-bit dot-product instructions (:data:`OPENVINO_INT8_ATTENTION_ISA`: VNNI or
#:   AMX). The default recipe (NNCF's INT8 on the ONNX graph, export/nncf_quantize.py; docs/precision.md)
#:   on AVX-512 VNNI (AMD EPYC, 2 cores, batch 1, one interleaved run each): OpenVINO 79.9 ms, ONNX
#:   Runtime 116.9 ms on the real-weights ViT-S (1.46x), 213.5 against 268.9 ms on ViT-B/16-384 (1.26x).
#:   The recipe before (``--cpu-recipe ort``, int8 attention in export/cpu_attention.py's layout):
#:   1.44-1.90x on Ice Lake, slower than ONNX Runtime on AVX2 alone (EPYC), where OpenVINO's int8
#:   kernels fall back; the default recipe is not yet measured on AVX2 alone, which keeps ONNX Runtime
#:   there. AMX and AVX-VNNI: OpenVINO's requirement, not measured here.
#: - fp32: on AVX-512 VNNI 1.11-1.27x ONNX Runtime, on AVX2 alone 0.85-1.07x; AMX unmeasured.
OPENVINO_ISA = {"int8-cpu": OPENVINO_INT8_ATTENTION_ISA, "fp32": ("AVX-512 VNNI", "AMX-INT8")}
OPENVINO_PRECISIONS = tuple(OPENVINO_ISA)


def cpu_backend(machine: Machine, precision: str) -> tuple[str, str]:
    """("openvino" | "onnxruntime", reason): the runtime for a CPU ``.onnx`` artifact of ``precision``."""
    if precision not in OPENVINO_ISA:
        return "onnxruntime", f"{precision} artifact: OpenVINO is chosen for {' and '.join(OPENVINO_PRECISIONS)} only"
    wanted = OPENVINO_ISA[precision]
    fast = [i for i in wanted if i in machine.cpu_isa]
    if not fast:
        return "onnxruntime", f"this CPU has none of {', '.join(wanted)}, where OpenVINO runs {precision} faster"
    if machine.openvino is None:
        return "onnxruntime", f"this CPU has {fast[0]}, where OpenVINO runs {precision} faster, but openvino is not installed"
    return "openvino", f"this CPU has {fast[0]}: OpenVINO {machine.openvino} runs {precision} faster than ONNX Runtime there"
