"""Parse a --target NAME into the LLVM CPU it stands for, or refuse it with the accepted forms and the nearest
names. Forms: host, an LLVM x86-64 CPU, a psABI level, a TVM x86 tag, a cloud instance family or size, cuda."""

from __future__ import annotations

import difflib
from typing import Literal, NamedTuple

from kiln.errors import TargetError
from kiln.targets.catalog import (
    CUDA,
    FAMILIES,
    HOST,
    LEGACY,
    LEVELS,
    LLVM_CPUS,
    NOT_X86_FAMILIES,
    NOT_X86_PREFIXES,
    TVM_TAGS,
)

Form = Literal["host", "level", "llvm-cpu", "tvm-tag", "instance", "cuda"]
FORMS = ("host (this CPU, the default), a psABI level (x86-64-v2, x86-64-v3, x86-64-v4), an LLVM x86-64 CPU "
         "(znver3, skylake-avx512, icelake-server, sapphirerapids, ...), a TVM x86 tag (aws/cpu/c5.large), a cloud "
         "instance family or size (c6i, c6i.2xlarge, m7a, n2d, ...) or cuda; `kiln targets` lists them")


class TargetName(NamedTuple):
    name: str  # normalized
    form: Form
    mcpu: str | None  # None: host (this CPU's, read at resolve time) or cuda
    source: str


def parse(raw: str) -> TargetName:
    name = raw.strip().lower()
    name = LEGACY.get(name, name)
    if name == HOST:
        return TargetName(HOST, "host", None, "this host's CPU (CPUID)")
    if name == CUDA:
        return TargetName(CUDA, "cuda", None, "an NVIDIA GPU")
    if name in LEVELS:
        return TargetName(name, "level", name, f"x86-64 psABI level: {LEVELS[name].what}")
    if name in LLVM_CPUS:
        return TargetName(name, "llvm-cpu", name, "LLVM's CPU")
    if name in TVM_TAGS:
        return TargetName(name, "tvm-tag", TVM_TAGS[name], "TVM's target tag")
    family = name.split(".")[0]
    if family in FAMILIES:
        row = FAMILIES[family]
        return TargetName(family, "instance", row.mcpu, f"{row.cpu} ({row.source})")
    if name.startswith(NOT_X86_PREFIXES) or family in NOT_X86_FAMILIES:
        raise TargetError(f"target {raw!r} is not an x86-64 CPU: kiln compiles for x86-64 and CUDA only for now "
                          "(aarch64 comes later)", hint="name the x86-64 CPU the artifact will run on, or `host`")
    if "/" in name and not name.startswith("aws/cpu/"):
        raise TargetError(f"target {raw!r}: only TVM's x86 CPU tags are accepted ({', '.join(sorted(TVM_TAGS))})",
                          hint="for a GPU use `cuda`")
    known = list(dict.fromkeys([*LEVELS, *LLVM_CPUS, *TVM_TAGS, *FAMILIES, HOST, CUDA]))
    near = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    raise TargetError(f"unknown target {raw!r}" + (f"; nearest: {', '.join(near)}" if near else ""),
                      hint=f"a target is {FORMS}")


def parse_all(raws: list[str]) -> list[TargetName]:
    """Each name once, in the order given (two names for the same CPU are one target)."""
    seen: dict[str, TargetName] = {}
    for raw in raws:
        parsed = parse(raw)
        seen.setdefault(parsed.name, parsed)
    return list(seen.values())
