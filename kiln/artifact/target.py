"""The CPU (or GPU) a build is compiled for, and what its code requires of the CPU that loads it.

Decided once per optimize run (kiln.compiler.targets.resolve, on the Plan) and recorded per build in the manifest,
so that `kiln.load` can refuse a build whose instructions this CPU lacks by name instead of dying with SIGILL.
`requires` uses the Linux /proc/cpuinfo flag names (kiln.runtime.cpu_flags).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Target(BaseModel):
    name: str  # as asked, normalized: host, x86-64-v3, znver3, aws/cpu/c5.large, c6i, cuda
    kind: Literal["llvm", "cuda"] = "llvm"
    mcpu: str | None = None  # the LLVM CPU the code is compiled for (llvm)
    mattr: list[str] = Field(default_factory=list)  # LLVM features turned off: the host lacks what its name implies
    requires: list[str] = Field(default_factory=list)  # CPU flags the compiled code may use
    source: str = ""  # why this LLVM CPU: the table row's source, the psABI, TVM's tag, or this host's CPUID
    cores: int | None = None  # a device's cores (what TVM's schedules parallelize over); None: the compiling host's
    measured_on: str | None = None  # the device whose timings chose this build (kiln.device): KEY@HOST:PORT

    @property
    def is_host(self) -> bool:
        return self.name == "host"

    @property
    def slug(self) -> str:
        """The name as one path component (aws/cpu/c5.large -> aws-cpu-c5.large): a fleet's build folder."""
        return self.name.replace("/", "-")

    @property
    def int8_isa(self) -> str:
        return int8_isa_of(self.requires)

    @property
    def vector_bits(self) -> int:
        return vector_bits_of(self.requires)

    def describe(self) -> str:
        if self.kind == "cuda":
            return "cuda"
        cpu = f"LLVM CPU {self.mcpu}" + (f" without {', '.join(a.lstrip('-') for a in self.mattr)}" if self.mattr
                                         else "")
        on = f"; the device {self.measured_on}, {self.cores} core(s)" if self.measured_on else ""
        return f"{self.name} ({cpu}; {self.vector_bits}-bit vectors, int8 {self.int8_isa}{on})"


def int8_isa_of(flags: list[str] | set[str] | frozenset[str]) -> str:
    """The best int8 dot-product instruction set among these flags (kiln.cpu.Int8Isa's values)."""
    have = set(flags)
    if "amx_int8" in have:
        return "amx"
    if "avx512_vnni" in have:
        return "avx512-vnni"
    if "avx_vnni" in have:
        return "avx-vnni"
    if "avx512bw" in have:
        return "avx512"
    if "avx2" in have:
        return "avx2"
    return "sse"


def vector_bits_of(flags: list[str] | set[str] | frozenset[str]) -> int:
    have = set(flags)
    return 512 if "avx512f" in have else 256 if "avx" in have else 128
