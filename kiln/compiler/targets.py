"""Compilation targets: TVM target dicts for this machine, and the runtime device each compiles for."""

from __future__ import annotations

import os

from kiln.config import settings
from kiln.errors import ModelError


def target_config(kind: str) -> dict:
    """The target dict for `kind` on this machine (llvm: the host CPU and all its cores).

    Target strings are gone in TVM 0.27 and {"kind": "llvm", "mcpu": "native"} silently means generic, so the
    CPU is named explicitly. MetaSchedule refuses a cuda target without its thread limits and a host."""
    if kind == "llvm":
        import tvm

        return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}
    if kind == "cuda":
        return {"kind": "cuda", "arch": settings().cuda_arch, "max_threads_per_block": 1024,
                "max_shared_memory_per_block": 49152, "thread_warp_size": 32, "max_num_threads": 1024,
                "host": {"kind": "llvm"}}
    raise ModelError(f"unknown target {kind!r}", hint="use --target llvm or --target cuda")


def device_for(kind: str) -> str:
    """The runtime device a module compiled for target `kind` runs on (the runners' `device` setting)."""
    return "cuda" if kind == "cuda" else "cpu"
