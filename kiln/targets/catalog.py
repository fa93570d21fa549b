"""The names kiln accepts for a target CPU, as data: psABI levels, LLVM's x86-64 CPUs, TVM's x86 tags and cloud
instance families. Each maps to one LLVM CPU; what that CPU's code requires is LLVM's to say
(kiln.compiler.targets.resolve). No TVM here: the optimize request checks a name before any work.

An instance family that spans CPU generations maps to the oldest: its code must run on every machine of the family.
"""

from __future__ import annotations

from typing import NamedTuple

HOST = "host"
CUDA = "cuda"
LEGACY = {"llvm": HOST}  # the single `target` of earlier requests: llvm meant this CPU


class Level(NamedTuple):
    qemu: str  # the `qemu-x86_64 -cpu` model that emulates it (qemu-user 7.2 stops at x86-64-v3), "" if none
    what: str


# x86-64 psABI microarchitecture levels (https://gitlab.com/x86-psABIs/x86-64-ABI), as distributions and wheels use
LEVELS: dict[str, Level] = {
    "x86-64": Level("qemu64", "baseline: SSE2 (every x86-64 CPU)"),
    "x86-64-v2": Level("Nehalem", "SSE4.2, POPCNT, CX16 (Intel 2008+, AMD 2011+)"),
    "x86-64-v3": Level("Haswell", "AVX2, FMA, BMI1/2, MOVBE (Intel Haswell 2013+, AMD Zen)"),
    "x86-64-v4": Level("", "AVX-512 F/BW/CD/DQ/VL (Intel Skylake-SP 2017+, AMD Zen 4)"),
}

# LLVM 22's x86 CPUs that run 64-bit code (TVM's `llvm_get_cpu_archlist`, aliases with `_` dropped; checked
# against the installed TVM by tests/test_targets.py)
LLVM_CPUS: tuple[str, ...] = (
    "alderlake", "amdfam10", "arrowlake", "arrowlake-s", "athlon-fx", "athlon64", "athlon64-sse3", "atom",
    "barcelona", "bdver1", "bdver2", "bdver3", "bdver4", "bonnell", "broadwell", "btver1", "btver2", "cannonlake",
    "cascadelake", "clearwaterforest", "cooperlake", "core-avx-i", "core-avx2", "core2", "corei7", "corei7-avx",
    "diamondrapids", "emeraldrapids", "generic", "goldmont", "goldmont-plus", "gracemont", "grandridge",
    "graniterapids", "graniterapids-d", "haswell", "icelake-client", "icelake-server", "ivybridge", "k8", "k8-sse3",
    "knl", "knm", "lunarlake", "meteorlake", "nehalem", "nocona", "novalake", "opteron", "opteron-sse3",
    "pantherlake", "penryn", "raptorlake", "rocketlake", "sandybridge", "sapphirerapids", "sierraforest",
    "silvermont", "skx", "skylake", "skylake-avx512", "slm", "tigerlake", "tremont", "westmere", "wildcatlake",
    "x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4", "znver1", "znver2", "znver3", "znver4", "znver5",
)

# TVM 0.27's x86 target tags (tvm.target.list_tags(), kind llvm): only their LLVM CPU is taken; the cores and
# threads stay this machine's (a device's, once measured there)
TVM_TAGS: dict[str, str] = {
    "aws/cpu/c5.large": "skylake-avx512", "aws/cpu/c5.xlarge": "skylake-avx512",
    "aws/cpu/c5.2xlarge": "skylake-avx512", "aws/cpu/c5.4xlarge": "skylake-avx512",
    "aws/cpu/c5.9xlarge": "skylake-avx512", "aws/cpu/c5.12xlarge": "cascadelake",
    "aws/cpu/c5.18xlarge": "skylake-avx512", "aws/cpu/c5.24xlarge": "cascadelake",
}


class Family(NamedTuple):
    mcpu: str
    cpu: str  # what the provider says the family runs on
    source: str


_AWS = "https://aws.amazon.com/ec2/instance-types/"
_GCP = "https://cloud.google.com/compute/docs/cpu-platforms"
# cloud instance families (their sizes share the CPU: c6i.2xlarge is c6i)
FAMILIES: dict[str, Family] = {
    **{f: Family("skylake-avx512", "Intel Xeon Platinum 8000 (Skylake-SP or Cascade Lake)", _AWS)
       for f in ("c5", "c5d", "c5n", "m5", "m5d", "r5", "r5d")},
    **{f: Family("znver1", "AMD EPYC 7000 (Naples, Zen 1)", _AWS) for f in ("m5a", "r5a")},
    **{f: Family("znver2", "AMD EPYC 7002 (Rome, Zen 2)", _AWS) for f in ("c5a", "c5ad")},
    **{f: Family("icelake-server", "Intel Xeon 3rd gen (Ice Lake)", _AWS)
       for f in ("c6i", "c6id", "c6in", "m6i", "m6id", "r6i", "r6id")},
    **{f: Family("znver3", "AMD EPYC 3rd gen (Milan, Zen 3)", _AWS) for f in ("c6a", "m6a", "r6a")},
    **{f: Family("sapphirerapids", "Intel Xeon 4th gen (Sapphire Rapids)", _AWS)
       for f in ("c7i", "m7i", "r7i", "c7i-flex", "m7i-flex")},
    **{f: Family("znver4", "AMD EPYC 4th gen (Genoa, Zen 4)", _AWS) for f in ("c7a", "m7a", "r7a")},
    "n2": Family("cascadelake", "Intel Cascade Lake or Ice Lake", _GCP),
    "n2d": Family("znver2", "AMD EPYC Rome or Milan", _GCP),
    "c2": Family("cascadelake", "Intel Cascade Lake", _GCP),
    "c2d": Family("znver3", "AMD EPYC Milan", _GCP),
    "c3": Family("sapphirerapids", "Intel Sapphire Rapids", _GCP),
    "c3d": Family("znver4", "AMD EPYC Genoa", _GCP),
    "c4": Family("emeraldrapids", "Intel Emerald Rapids", _GCP),
    "c4d": Family("znver5", "AMD EPYC Turin", _GCP),
}

# names of CPUs kiln does not compile for yet: refused by name, not as a typo
NOT_X86_PREFIXES = ("aarch64", "arm", "graviton", "neoverse", "cortex-", "apple", "ampere", "altra", "riscv", "rv64",
                    "sifive", "thunderx", "raspberry", "power", "ppc", "s390")
NOT_X86_FAMILIES = ("a1", "c6g", "c6gd", "c6gn", "c7g", "c7gd", "c7gn", "c8g", "m6g", "m6gd", "m7g", "m7gd", "m8g",
                    "r6g", "r7g", "r8g", "t4g", "x2gd", "t2a", "c4a")
