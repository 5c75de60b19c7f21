"""The CPU this process runs on: its instruction sets, the cores it may use, and its peak MAC rate.

Everything here reads text (``/proc/cpuinfo``, cgroup files) through functions that also take that
text as an argument, so that tests can drive them with recorded machines. No third-party imports.

Peak multiply-accumulates per cycle per core, by the widest instruction the CPU has (the vector
units per core are the usual ones for the vendor; a CPU with fewer makes the limit lower, never
higher than this table says, so a share of it is a conservative figure):

- int8: AVX2 ``vpmaddubsw`` + ``vpmaddwd`` (32 u8*s8 products in two instructions, two ports): 32;
  AVX-VNNI ``vpdpbusd ymm`` (32 per instruction, two per cycle): 64; AVX-512 VNNI ``vpdpbusd zmm``
  (64 per instruction, two FMA units on Intel Xeon; AMD Zen 4 runs 512-bit ops on 256-bit units): 128
  Intel, 64 AMD family 25, 128 AMD family 26 (Zen 5); AMX ``tdpbusd`` (16x16x64 per 16 cycles): 1024.
- fp32: FMA3 ``vfmadd231ps ymm`` (8 lanes, two units): 16; AVX-512 ``zmm`` (16 lanes): 32 Intel, 16
  AMD family 25, 32 AMD family 26.
- bf16: AVX-512 BF16 ``vdpbf16ps zmm`` (32 products, two units): 64; AMX-BF16 ``tdpbf16ps``: 512.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

#: The instruction sets vitrt reports, each with the /proc/cpuinfo flags that mean it (any of them).
ISA_FLAGS = {
    "AVX2": ("avx2",),
    "FMA": ("fma",),
    "AVX-512": ("avx512f",),
    "AVX-VNNI": ("avx_vnni",),
    "AVX-512 VNNI": ("avx512_vnni",),
    "AVX-512 BF16": ("avx512_bf16",),
    "AMX-BF16": ("amx_bf16",),
    "AMX-INT8": ("amx_int8",),
}

#: Where to read a cgroup's CPU quota: v2's ``cpu.max`` ("max 100000" or "200000 100000") and v1's
#: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none).
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class CpuInfo:
    model: str
    vendor: str
    family: int
    flags: frozenset = field(default_factory=frozenset)
    mhz: float | None = None  # the clock: the model name's nominal "@ 2.80GHz", else cpuinfo's "cpu MHz"
    clock_source: str = "unknown"
    topology: dict[int, tuple[str, str]] = field(default_factory=dict)  # logical CPU -> (package, core)

    @property
    def isa(self) -> list[str]:
        """The instruction sets of :data:`ISA_FLAGS` this CPU has, in that order."""
        return [name for name, flags in ISA_FLAGS.items() if any(f in self.flags for f in flags)]


def parse_cpuinfo(text: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (x86 Linux; the first processor's flags)."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    if not blocks:
        return CpuInfo(model="unknown", vendor="unknown", family=0)
    fields_of = [dict((k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in b.splitlines()) if k.strip())
                 for b in blocks]
    first = fields_of[0]
    topology = {}
    for f in fields_of:
        if "processor" in f and f["processor"].isdigit():
            topology[int(f["processor"])] = (f.get("physical id", "0"), f.get("core id", f["processor"]))
    model = first.get("model name", "unknown")
    nominal = re.search(r"@\s*([\d.]+)\s*GHz", model)
    mhz, source = None, "unknown"
    if nominal:
        mhz, source = 1000 * float(nominal.group(1)), "nominal clock in the model name"
    elif first.get("cpu MHz"):
        mhz, source = float(first["cpu MHz"]), "cpu MHz in /proc/cpuinfo (the current clock)"
    family = first.get("cpu family", "0")
    return CpuInfo(model=model, vendor=first.get("vendor_id", "unknown"), family=int(family) if family.isdigit() else 0,
                   flags=frozenset(first.get("flags", "").split()), mhz=mhz, clock_source=source, topology=topology)


#: The instruction sets whose 8-bit dot products accumulate in 32 bits (VPDPBUSD, TDPBUSD). An x86 CPU
#: with none of them runs u8 x s8 products with VPMADDUBSW, which adds each pair in 16 bits and saturates:
#: int8 outputs go off unless the runtime avoids it (docs/precision.md, "Without VNNI").
INT8_DOT_ISA = ("AMX-INT8", "AVX-512 VNNI", "AVX-VNNI")


def int8_saturates(cpu: CpuInfo) -> bool:
    """True on an x86 CPU (AVX2 at least) with none of :data:`INT8_DOT_ISA`."""
    isa = cpu.isa
    return "AVX2" in isa and not any(i in isa for i in INT8_DOT_ISA)


def read_cpuinfo(path: str | os.PathLike = "/proc/cpuinfo") -> CpuInfo:
    try:
        return parse_cpuinfo(Path(path).read_text())
    except OSError:
        import platform

        return CpuInfo(model=platform.processor() or platform.machine(), vendor="unknown", family=0)


def peak_macs_per_cycle(cpu: CpuInfo) -> dict[str, tuple[int, str]]:
    """Per core per cycle: ``{"int8": (n, instruction), "fp32": ..., "bf16": ...}`` (see the module doc)."""
    isa = set(cpu.isa)
    amd = cpu.vendor == "AuthenticAMD"
    full512 = not amd or cpu.family >= 26  # two full-width 512-bit units (Intel Xeon, AMD Zen 5)
    out: dict[str, tuple[int, str]] = {}
    if "AMX-INT8" in isa:
        out["int8"] = (1024, "AMX tdpbusd")
    elif "AVX-512 VNNI" in isa:
        out["int8"] = (128 if full512 else 64, "AVX-512 VNNI vpdpbusd")
    elif "AVX-VNNI" in isa:
        out["int8"] = (64, "AVX-VNNI vpdpbusd")
    elif "AVX2" in isa:
        out["int8"] = (32, "AVX2 vpmaddubsw+vpmaddwd")
    if "AVX-512" in isa:
        out["fp32"] = (32 if full512 else 16, "AVX-512 vfmadd231ps")
    elif "FMA" in isa:
        out["fp32"] = (16, "FMA3 vfmadd231ps")
    if "AMX-BF16" in isa:
        out["bf16"] = (512, "AMX tdpbf16ps")
    elif "AVX-512 BF16" in isa:
        out["bf16"] = (64 if full512 else 32, "AVX-512 BF16 vdpbf16ps")
    return out


def peak_macs(cpu: CpuInfo, cores: int) -> dict[str, float]:
    """Peak MAC/s per data type for ``cores`` cores at ``cpu.mhz`` (empty where the clock is unknown)."""
    if not cpu.mhz:
        return {}
    return {k: n * cores * cpu.mhz * 1e6 for k, (n, _) in peak_macs_per_cycle(cpu).items()}


# --- the cores this process may use ----------------------------------------------------------------------
def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = 150 ms per 100 ms), or None for none.

    Looks at cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``) both at the mount root (a container's
    own view) and under the path /proc/self/cgroup names; the smallest quota found wins."""
    root = Path(root)
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    v2_paths, v1_paths = [root], [root / "cpu", root / "cpu,cpuacct"]
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        rel = parts[2].lstrip("/")
        if parts[0] == "0":
            v2_paths.append(root / rel)
        elif "cpu" in parts[1].split(","):
            v1_paths += [root / parts[1] / rel, root / "cpu" / rel]
    limits = []
    for d in v2_paths:
        quota = _read(d / "cpu.max").split()
        if len(quota) == 2 and quota[0] != "max":
            limits.append(int(quota[0]) / int(quota[1]))
    for d in v1_paths:
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if quota.lstrip("-").isdigit() and int(quota) > 0 and period.isdigit() and int(period) > 0:
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def usable_cores(cpu: CpuInfo | None = None, affinity: set[int] | None = None,
                 quota: float | None | str = "read") -> tuple[int, str]:
    """``(n, why)``: the physical cores this process may run on. The logical CPUs of its affinity mask
    are counted once per core (hyper-threads share a core's vector units), then capped by the
    cgroup CPU quota rounded up. ``os.cpu_count()`` counts neither."""
    cpu = cpu or read_cpuinfo()
    if affinity is None:
        affinity = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if quota == "read":
        quota = cgroup_cpu_limit()
    known = [cpu.topology[c] for c in affinity if c in cpu.topology]
    cores = len(set(known)) + (len(affinity) - len(known))  # CPUs without topology count as cores
    why = f"{cores} physical core{'s' * (cores != 1)} in this process's affinity ({len(affinity)} logical CPUs)"
    if quota is not None and math.ceil(quota) < cores:
        cores = max(1, math.ceil(quota))
        why = f"{cores} from the cgroup CPU quota of {quota:g} CPUs (affinity allows more)"
    return max(1, cores), why
