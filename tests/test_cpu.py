"""vitrt/cpu.py on recorded machines (tests/data/cpuinfo/README.md says where each came from): the
instruction sets, the peak MAC rates that follow from them, the clock, and the cores a process may use."""

from pathlib import Path

import pytest

from vitrt import cpu

DATA = Path(__file__).parent / "data" / "cpuinfo"


def machine(name: str) -> cpu.CpuInfo:
    return cpu.parse_cpuinfo((DATA / name).read_text())


def test_avx2_only_epyc():
    c = machine("epyc_7702_avx2.txt")
    assert (c.vendor, c.family, c.model) == ("AuthenticAMD", 23, "AMD EPYC 7702 64-Core Processor")
    assert c.isa == ["AVX2", "FMA"]
    assert cpu.peak_macs_per_cycle(c) == {"int8": (32, "AVX2 vpmaddubsw+vpmaddwd"), "fp32": (16, "FMA3 vfmadd231ps")}
    # no "@ GHz" in an EPYC's name: the clock is cpuinfo's current "cpu MHz"
    assert c.mhz == pytest.approx(1996.248) and "cpu MHz" in c.clock_source


def test_avx512_vnni_icelake():
    c = machine("xeon_icelake_avx512_vnni.txt")
    assert c.isa == ["AVX2", "FMA", "AVX-512", "AVX-512 VNNI"]
    assert cpu.peak_macs_per_cycle(c) == {"int8": (128, "AVX-512 VNNI vpdpbusd"), "fp32": (32, "AVX-512 vfmadd231ps")}
    assert c.mhz == 2800.0 and c.clock_source == "nominal clock in the model name"
    assert cpu.usable_cores(c, affinity={0, 1}, quota=None)[0] == 2  # two cores, one thread each
    # 2 cores x 2.8 GHz x 128 int8 MACs: 716.8 GMAC/s, 12.9 ViT-B/16-384 images/s at 55.5 GMAC each
    assert cpu.peak_macs(c, 2)["int8"] == pytest.approx(716.8e9)


def test_amx_emerald_rapids():
    c = machine("xeon_8573c_amx.txt")
    assert c.isa == ["AVX2", "FMA", "AVX-512", "AVX-VNNI", "AVX-512 VNNI", "AVX-512 BF16", "AMX-BF16", "AMX-INT8"]
    peak = cpu.peak_macs_per_cycle(c)
    assert peak["int8"] == (1024, "AMX tdpbusd") and peak["bf16"] == (512, "AMX tdpbf16ps") and peak["fp32"][0] == 32
    assert c.mhz is None or c.mhz > 0
    # two vCPUs that are the two hyper-threads of one core: one core's vector units
    assert cpu.usable_cores(c, affinity={0, 1}, quota=None) == (1, "1 physical core in this process's affinity (2 logical CPUs)")


def test_amd_zen4_halves_512_bit_rates():
    """Zen 4 (family 25) runs 512-bit instructions on 256-bit units; Zen 5 (26) has full-width ones."""
    base = machine("epyc_7702_avx2.txt")
    flags = base.flags | {"avx512f", "avx512_vnni", "avx512_bf16"}
    zen4 = cpu.CpuInfo(model="AMD EPYC 9654", vendor="AuthenticAMD", family=25, flags=flags)
    zen5 = cpu.CpuInfo(model="AMD EPYC 9655", vendor="AuthenticAMD", family=26, flags=flags)
    assert cpu.peak_macs_per_cycle(zen4)["int8"][0] == 64 and cpu.peak_macs_per_cycle(zen4)["fp32"][0] == 16
    assert cpu.peak_macs_per_cycle(zen5)["int8"][0] == 128 and cpu.peak_macs_per_cycle(zen5)["bf16"][0] == 64


def test_cores_from_affinity_and_quota():
    c = machine("xeon_8573c_amx.txt")
    assert cpu.usable_cores(c, affinity={1}, quota=None)[0] == 1
    ice = machine("xeon_icelake_avx512_vnni.txt")
    assert cpu.usable_cores(ice, affinity={0}, quota=None)[0] == 1  # pinned to one CPU
    n, why = cpu.usable_cores(ice, affinity={0, 1}, quota=0.5)  # half a CPU: one thread, not zero
    assert n == 1 and "quota of 0.5" in why
    assert cpu.usable_cores(ice, affinity={0, 1}, quota=1.5)[0] == 2  # 1.5 CPUs round up
    # logical CPUs that /proc/cpuinfo does not list (a container's view) count as cores
    assert cpu.usable_cores(ice, affinity={0, 1, 7}, quota=None)[0] == 3


def test_cgroup_quota_v1_and_v2(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")  # v2, no quota
    assert cpu.cgroup_cpu_limit(tmp_path, proc_cgroup="0::/\n") is None
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("150000 100000\n")
    assert cpu.cgroup_cpu_limit(tmp_path, proc_cgroup="0::/job\n") == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu.cgroup_cpu_limit(v1, proc_cgroup="4:cpu,cpuacct:/\n") is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cpu.cgroup_cpu_limit(v1, proc_cgroup="4:cpu,cpuacct:/\n") == 3.0


def test_this_machine_reads(monkeypatch):
    """Whatever this machine is: at least one core, a reason, and the ISA list in its fixed order."""
    n, why = cpu.usable_cores()
    assert n >= 1 and "core" in why
    here = cpu.read_cpuinfo()
    assert here.isa == [i for i in cpu.ISA_FLAGS if i in here.isa]


def test_vit_b16_384_macs():
    """The 55.5 GMAC per image the limit counts: 49.4 G in the Linear and patch layers, 6.1 G in attention."""
    timm = pytest.importorskip("timm")
    from benchmarks.standing import vit_macs

    import torch

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_384", pretrained=False)
    macs = vit_macs(model)
    assert macs["linear"] / 1e9 == pytest.approx(49.35, abs=0.01)
    assert macs["attention"] / 1e9 == pytest.approx(6.14, abs=0.01)


def test_int8_saturates_where_no_8_bit_dot_product_is():
    """VPMADDUBSW saturates its 16-bit pair sums; VNNI and AMX accumulate in 32 bits (vitrt/cpu.py)."""
    assert cpu.int8_saturates(machine("epyc_7702_avx2.txt"))
    assert not cpu.int8_saturates(machine("xeon_icelake_avx512_vnni.txt"))
    assert not cpu.int8_saturates(machine("xeon_8573c_amx.txt"))
    assert not cpu.int8_saturates(cpu.CpuInfo(model="arm", vendor="unknown", family=0))  # not x86: no claim
