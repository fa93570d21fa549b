"""What this CPU offers for int8 arithmetic, as onnxruntime's kernels see it.

The int8 instruction set decides whether onnxruntime's u8 x s8 kernels are exact. Without VNNI (AVX2 only,
or AVX-512 without VNNI) MLAS multiplies u8 x s8 pairs with `vpmaddubsw`, whose int16 pair sums saturate at
32767 (255 * 127 * 2 does not fit); with VNNI (`vpdpbusd`, AVX-512 or the 256-bit AVX-VNNI) or AMX the products
accumulate in int32 exactly. u8 x u8 kernels widen to int16 and `vpmaddwd` on every CPU, so they are exact
everywhere. Measured on a small MLP under an emulated AMD EPYC znver3 (`qemu-x86_64 -cpu EPYC-Milan`): U8S8
dynamic int8 fell from cosine 0.9995 to 0.9917 and static QDQ from 0.9995 to 0.9614, while U8U8 gave the
same outputs as on the VNNI host.

So kiln quantizes weights to uint8 where u8 x s8 saturates, and keeps the usual (and on VNNI fastest) U8S8
where it is exact: `Int8Scheme`.

The features come from CPUID (kiln.runtime.cpu_flags), not from /proc/cpuinfo, which describes the host even
where the process runs on an emulated or masked CPU.

What is quantized for is the target's CPU (kiln.artifact.target.Target.int8_isa), not this one:
`Int8Scheme.for_target`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiln.artifact.target import Target, int8_isa_of
from kiln.runtime.cpu_flags import this_cpu

Int8Isa = Literal["amx", "avx512-vnni", "avx-vnni", "avx512", "avx2", "sse"]
EXACT_U8S8: frozenset[str] = frozenset({"amx", "avx512-vnni", "avx-vnni"})


def cpuinfo_flags() -> set[str]:
    """The flags /proc/cpuinfo lists for the first CPU (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def detected_int8_isa() -> Int8Isa:
    """The best int8 dot-product instruction set of the CPU this process runs on."""
    return int8_isa_of(this_cpu().flags)  # type: ignore[return-value]


def u8s8_exact(isa: str) -> bool:
    """Whether onnxruntime's u8 x s8 int8 kernels accumulate exactly on `isa` (no int16 saturation)."""
    return isa in EXACT_U8S8


def int8_isa() -> str:
    """The int8 instruction set to quantize for: KILN_INT8_ISA where set (the serving CPUs'), else this CPU's."""
    from kiln.config import settings

    configured = settings().int8_isa
    return detected_int8_isa() if configured == "auto" else configured


@dataclass(frozen=True)
class Int8Scheme:
    isa: str  # an Int8Isa
    u8_weights: bool  # U8U8 instead of U8S8

    @classmethod
    def for_isa(cls, isa: str) -> Int8Scheme:
        return cls(isa=isa, u8_weights=not u8s8_exact(isa))

    @classmethod
    def current(cls) -> Int8Scheme:
        """For KILN_INT8_ISA's CPUs where set (the serving fleet's), else for this one."""
        return cls.for_isa(int8_isa())

    @classmethod
    def for_target(cls, target: Target) -> Int8Scheme:
        """For the target's CPU (KILN_INT8_ISA chooses a target where no --target is given: kiln.optimize.plan)."""
        return cls.for_isa(target.int8_isa)

    @property
    def label(self) -> str:
        return "U8U8" if self.u8_weights else "U8S8"

    @property
    def quant_type(self) -> str:
        """The weights' onnxruntime.quantization.QuantType name."""
        return "QUInt8" if self.u8_weights else "QInt8"


@dataclass(frozen=True)
class Clock:
    ghz: float
    source: str  # where it was read, and what it is


def base_clock() -> Clock | None:
    """The CPU's base clock, what int8 peaks are computed at (kiln.compiler.int8.peak): cpufreq's base_frequency
    where the kernel exposes it, else the GHz in an Intel model name ("... @ 2.60GHz"), else /proc/cpuinfo's `cpu
    MHz`, which in a VM is the nominal clock the hypervisor reports (not the one the core runs at: a turbo runs
    above it) and on bare metal the clock at the moment it was read. None if none is known."""
    base = Path("/sys/devices/system/cpu/cpu0/cpufreq/base_frequency")
    try:
        return Clock(int(base.read_text()) / 1e6, "cpufreq base_frequency")
    except (OSError, ValueError):
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    lines = text.splitlines()
    name = next((ln.partition(":")[2] for ln in lines if ln.startswith("model name")), "")
    m = re.search(r"@\s*(\d+(?:\.\d+)?)\s*GHz", name)
    if m:
        return Clock(float(m[1]), "the base clock in the model name")
    line = next((ln for ln in lines if ln.startswith("cpu MHz")), "")
    try:
        mhz = float(line.partition(":")[2])
    except ValueError:
        return None
    vm = "hypervisor" in cpuinfo_flags()
    return Clock(mhz / 1000.0, "/proc/cpuinfo cpu MHz, a VM's nominal clock: a turbo runs above it" if vm else
                 "/proc/cpuinfo cpu MHz, the clock when read")


def clock_ghz() -> float | None:
    """The base clock in GHz (base_clock()); None if unknown."""
    clock = base_clock()
    return clock.ghz if clock else None
