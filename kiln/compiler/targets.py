"""Compilation targets: a target name resolved once into what TVM compiles for (kiln.artifact.target.Target), the
TVM target dict of a Target, and the runtime device each compiles for."""

from __future__ import annotations

import os

from kiln.artifact.target import Target
from kiln.config import settings
from kiln.errors import TargetError
from kiln.runtime.cpu_flags import FLAGS, from_llvm, this_cpu
from kiln.targets import TargetName, parse


def llvm_features(mcpu: str) -> set[str]:
    """LLVM's features of the CPU `mcpu` (what its code may use)."""
    import tvm

    return set(tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": mcpu})))


def resolve(name: str | TargetName) -> Target:
    """The Target a name stands for. `host` is LLVM's name for this CPU minus the features its CPUID lacks (a VM
    often masks some: LLVM's `emeraldrapids` implies AMX, the VM may not offer it), so that no build for the host
    uses an instruction the host cannot run."""
    parsed = parse(name) if isinstance(name, str) else name
    if parsed.form == "cuda":
        return Target(name="cuda", kind="cuda", source=parsed.source)
    if parsed.form == "host":
        import tvm

        return _masked("host", tvm.target.codegen.llvm_get_system_cpu(), this_cpu().flags, parsed.source)
    features = llvm_features(parsed.mcpu or "")
    if "64bit" not in features:
        raise TargetError(f"target {parsed.name!r}: LLVM's {parsed.mcpu} does not run x86-64 code")
    return Target(name=parsed.name, mcpu=parsed.mcpu, requires=from_llvm(features), source=parsed.source)


def _masked(name: str, mcpu: str, have: frozenset[str] | set[str], source: str) -> Target:
    """LLVM's CPU `mcpu` minus every feature it implies that the CPU with flags `have` lacks."""
    features = llvm_features(mcpu)
    absent = sorted(FLAGS[f][0] for f in from_llvm(features) if f not in have)
    return Target(name=name, mcpu=mcpu, mattr=[f"-{f}" for f in absent],
                  requires=[f for f in from_llvm(features) if f in have], source=source)


def for_flags(name: str, have: frozenset[str] | set[str], source: str) -> Target:
    """The Target of a CPU known only by its CPUID flags (a device: TVM's runtime has no llvm_get_system_cpu): the
    LLVM x86-64 CPU that has the most of those flags and, among those, implies the fewest it lacks, minus those."""
    from kiln.targets.catalog import LLVM_CPUS

    def fit(mcpu: str) -> tuple[int, int]:
        implied = set(from_llvm(llvm_features(mcpu)))
        return len(implied & set(have)), -len(implied - set(have))

    return _masked(name, max(LLVM_CPUS, key=fit), have, source)


def target_config(target: Target | str) -> dict:
    """The TVM target dict of `target` (a name is resolved first): its LLVM CPU and features, this machine's cores.

    Target strings are gone in TVM 0.27 and {"kind": "llvm", "mcpu": "native"} silently means generic, so the
    CPU is named explicitly. MetaSchedule refuses a cuda target without its thread limits and a host."""
    if isinstance(target, str):
        target = resolve(target)
    if target.kind == "cuda":
        return {"kind": "cuda", "arch": settings().cuda_arch, "max_threads_per_block": 1024,
                "max_shared_memory_per_block": 49152, "thread_warp_size": 32, "max_num_threads": 1024,
                "host": {"kind": "llvm"}}
    return {"kind": "llvm", "mcpu": target.mcpu, "num-cores": target.cores or os.cpu_count() or 1,
            **({"mattr": list(target.mattr)} if target.mattr else {})}


def device_for(kind: str) -> str:
    """The runtime device a module compiled for target `kind` runs on (the runners' `device` setting)."""
    return "cuda" if kind == "cuda" else "cpu"


def catalog(every_cpu: bool = False) -> list[dict]:
    """One row per name `--target` accepts (LLVM's x86-64 CPUs only with every_cpu): its form, LLVM CPU, int8
    instruction set, vector width, whether this host runs its code, the qemu model that emulates it, the source."""
    from kiln.targets.catalog import FAMILIES, LEVELS, LLVM_CPUS, TVM_TAGS

    names = ["host", *LEVELS, *FAMILIES, *TVM_TAGS, *(c for c in LLVM_CPUS if c not in LEVELS and every_cpu)]
    have = this_cpu().flags
    rows = []
    for name in names:
        parsed = parse(name)
        target = resolve(parsed)
        rows.append({"name": name, "form": parsed.form, "mcpu": target.mcpu, "int8": target.int8_isa,
                     "vector_bits": target.vector_bits, "runs_here": set(target.requires) <= have,
                     "qemu": LEVELS[name].qemu if name in LEVELS else "", "source": parsed.source})
    return rows
