"""The instruction-set flags of the CPU this process runs on, in one vocabulary: the Linux /proc/cpuinfo flag names.

A TVM library is machine code for the CPU it was compiled for: loaded on a CPU without one of its instruction sets it
dies with SIGILL, with no message. So every build records the flags its code may use (`requires`, mapped from the
LLVM features of its target by `from_llvm`) and `check` compares them with this CPU's before any library is opened.

The flags are read with the CPUID instruction itself (a few bytes of machine code called through ctypes), not from
/proc/cpuinfo: an emulated CPU (`qemu-x86_64 -cpu EPYC-Milan`) or a container on a masked CPU answers CPUID for
itself, while /proc/cpuinfo describes the host. The operating system's support for the wide registers (XGETBV's
XCR0) is checked as the kernel does before it lists avx/avx512*/amx*. Where CPUID cannot be run (another
architecture, a sandbox forbidding executable memory) /proc/cpuinfo is read instead (`source` says which).
numpy's CPUID table lacks BMI1/2, LZCNT, MOVBE, AVX-VNNI and AMX, which x86-64-v3 and int8 need.

This module ships in the runtime image: it imports nothing beyond the standard library and the manifest.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kiln.artifact.manifest import Manifest
from kiln.errors import TargetError

# /proc/cpuinfo name: (LLVM feature, CPUID leaf, subleaf, register, bit). Every flag of x86-64-v2/v3/v4 and the
# int8/bf16 extensions kiln's kernels use; the flags that change what LLVM may emit, nothing else is checked.
FLAGS: dict[str, tuple[str, int, int, str, int]] = {
    "sse": ("sse", 1, 0, "edx", 25), "sse2": ("sse2", 1, 0, "edx", 26),
    "pni": ("sse3", 1, 0, "ecx", 0), "pclmulqdq": ("pclmul", 1, 0, "ecx", 1), "ssse3": ("ssse3", 1, 0, "ecx", 9),
    "fma": ("fma", 1, 0, "ecx", 12), "cx16": ("cx16", 1, 0, "ecx", 13), "sse4_1": ("sse4.1", 1, 0, "ecx", 19),
    "sse4_2": ("sse4.2", 1, 0, "ecx", 20), "movbe": ("movbe", 1, 0, "ecx", 22), "popcnt": ("popcnt", 1, 0, "ecx", 23),
    "aes": ("aes", 1, 0, "ecx", 25), "xsave": ("xsave", 1, 0, "ecx", 26), "avx": ("avx", 1, 0, "ecx", 28),
    "f16c": ("f16c", 1, 0, "ecx", 29),
    "bmi1": ("bmi", 7, 0, "ebx", 3), "avx2": ("avx2", 7, 0, "ebx", 5), "bmi2": ("bmi2", 7, 0, "ebx", 8),
    "avx512f": ("avx512f", 7, 0, "ebx", 16), "avx512dq": ("avx512dq", 7, 0, "ebx", 17),
    "adx": ("adx", 7, 0, "ebx", 19), "avx512ifma": ("avx512ifma", 7, 0, "ebx", 21),
    "avx512cd": ("avx512cd", 7, 0, "ebx", 28), "sha_ni": ("sha", 7, 0, "ebx", 29),
    "avx512bw": ("avx512bw", 7, 0, "ebx", 30), "avx512vl": ("avx512vl", 7, 0, "ebx", 31),
    "avx512vbmi": ("avx512vbmi", 7, 0, "ecx", 1), "avx512_vbmi2": ("avx512vbmi2", 7, 0, "ecx", 6),
    "gfni": ("gfni", 7, 0, "ecx", 8), "vaes": ("vaes", 7, 0, "ecx", 9), "vpclmulqdq": ("vpclmulqdq", 7, 0, "ecx", 10),
    "avx512_vnni": ("avx512vnni", 7, 0, "ecx", 11), "avx512_bitalg": ("avx512bitalg", 7, 0, "ecx", 12),
    "avx512_vpopcntdq": ("avx512vpopcntdq", 7, 0, "ecx", 14),
    "amx_bf16": ("amx-bf16", 7, 0, "edx", 22), "avx512_fp16": ("avx512fp16", 7, 0, "edx", 23),
    "amx_tile": ("amx-tile", 7, 0, "edx", 24), "amx_int8": ("amx-int8", 7, 0, "edx", 25),
    "avx_vnni": ("avxvnni", 7, 1, "eax", 4), "avx512_bf16": ("avx512bf16", 7, 1, "eax", 5),
    "lahf_lm": ("sahf", 0x80000001, 0, "ecx", 0), "abm": ("lzcnt", 0x80000001, 0, "ecx", 5),
}
_BY_LLVM = {llvm: flag for flag, (llvm, *_) in FLAGS.items()}
# XCR0 state components the kernel must enable before these registers may be used (else: #UD, as a missing flag)
_XCR0_AVX, _XCR0_AVX512, _XCR0_AMX = 0x6, 0xE6, 0x60000
_NEEDS_XCR0 = {**dict.fromkeys(("avx", "avx2", "fma", "f16c", "avx_vnni", "vaes", "vpclmulqdq"), _XCR0_AVX),
               **{f: _XCR0_AVX512 for f in FLAGS if f.startswith("avx512")},
               **{f: _XCR0_AMX for f in FLAGS if f.startswith("amx")}}

# void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4]) and uint64 xgetbv(uint32 index), System V x86-64
_CPUID = bytes.fromhex("53" "4989d0" "89f8" "89f1" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")
_XGETBV = bytes.fromhex("89f9" "0f01d0" "48c1e220" "4809d0" "c3")


@dataclass(frozen=True)
class CpuFlags:
    flags: frozenset[str]
    source: str  # "cpuid" or "/proc/cpuinfo"


def from_llvm(features: set[str] | list[str]) -> list[str]:
    """The flags (this module's vocabulary) that LLVM features name; features outside it (tuning hints such as
    `fast-15bytenop`, or instructions LLVM never emits for kernels) are dropped."""
    return sorted({_BY_LLVM[f.lstrip("+")] for f in features if f.lstrip("+") in _BY_LLVM})


def missing(requires: list[str] | set[str], have: frozenset[str] | set[str]) -> list[str]:
    return sorted(set(requires) - set(have))


class _Cpuid:
    """CPUID and XGETBV as callables over a page of executable memory holding their machine code."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._page.write(_CPUID + b"\x90" * (64 - len(_CPUID)) + _XGETBV)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self.cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(base)
        self.xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32)(base + 64)

    def regs(self, leaf: int, subleaf: int = 0) -> dict[str, int]:
        out = (ctypes.c_uint32 * 4)()
        self.cpuid(leaf, subleaf, out)
        return dict(zip(("eax", "ebx", "ecx", "edx"), out, strict=True))


def _read_cpuid() -> frozenset[str]:
    cpu = _Cpuid()
    top, top_ext = cpu.regs(0)["eax"], cpu.regs(0x80000000)["eax"]
    leaves: dict[tuple[int, int], dict[str, int]] = {}
    have = set()
    for flag, (_, leaf, sub, reg, bit) in FLAGS.items():
        if leaf > (top_ext if leaf & 0x80000000 else top):
            continue
        if (leaf, sub) not in leaves:
            leaves[leaf, sub] = cpu.regs(leaf, sub)
        if sub > 0 and sub > leaves.setdefault((leaf, 0), cpu.regs(leaf, 0))["eax"]:  # subleaf past the last one
            continue
        if leaves[leaf, sub][reg] >> bit & 1:
            have.add(flag)
    osxsave = cpu.regs(1)["ecx"] >> 27 & 1
    xcr0 = cpu.xgetbv(0) if osxsave else 0
    return frozenset(f for f in have if (xcr0 & _NEEDS_XCR0.get(f, 0)) == _NEEDS_XCR0.get(f, 0))


def _read_proc(text: str | None = None) -> frozenset[str]:
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(set(line.partition(":")[2].split()) & set(FLAGS))


@cache
def this_cpu() -> CpuFlags:
    """This CPU's flags as CPUID answers them (what an emulated or masked CPU really offers)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            return CpuFlags(_read_cpuid(), "cpuid")
        except (OSError, ValueError, AttributeError):  # no executable page allowed here
            pass
    return CpuFlags(_read_proc(), "/proc/cpuinfo")


def for_this_cpu(manifest: Manifest, where: str = "") -> Manifest:
    """The artifact as its most capable build this CPU runs (the one whose required flags, all present here, are
    the most): read before any compiled library is opened. Where none can run here, a TargetError naming the
    target(s) it was built for and the flags this CPU lacks (their code would die with SIGILL). Artifacts published
    before builds recorded their flags load as before."""
    if not manifest.builds:
        return manifest
    here = this_cpu()
    lacks = {b.target.name: missing(b.requires, here.flags) for b in manifest.builds}
    runnable = [b for b in manifest.builds if not lacks[b.target.name]]
    if runnable:
        best = max(runnable, key=lambda b: len(b.requires))  # max keeps the first of equals: the manifest's order
        return manifest.view(best) if manifest.is_fleet else manifest
    what = "; ".join(f"{name}: lacks {', '.join(absent)}" for name, absent in lacks.items())
    label = f"{manifest.name} v{manifest.version}" if manifest.version else manifest.name
    raise TargetError(f"{label} was built for {', '.join(lacks)} and this CPU cannot run "
                      f"that code ({what}; read by {here.source})", where=where or None,
                      hint="optimize it again for this CPU (--target host, or a target it has: `kiln targets`)")
