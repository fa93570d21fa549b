"""Where a target's candidates are judged, decided once per target on the Plan.

A build runs here when this host has every CPU flag its code uses: then the host stands in for the target (speed
and accuracy measured here, the manifest says so). A compiled build for a CPU above this one (AVX2 code on an
SSE4.2 host) cannot run here: where qemu-user emulates such a CPU, its accuracy is judged there and its speed is
not measured, so it never wins over the baseline; where it emulates none (AVX-512, VNNI, AMX), the build is kept
but not judged, so it never ships untested. onnxruntime's rows run here in every case: onnxruntime picks its
kernels by CPUID on the CPU it runs on.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from kiln.artifact.target import Target
from kiln.optimize.emulation import cpu_for
from kiln.runtime.cpu_flags import missing, this_cpu


class Judging(BaseModel):
    """How this host judges one target's compiled builds."""

    lacking: list[str] = Field(default_factory=list)  # flags the target's code uses that this host lacks
    emulator: str | None = None  # the qemu CPU model that judges their accuracy, when the host lacks some

    @property
    def here(self) -> bool:
        return not self.lacking

    def speed_not_measured(self) -> str:
        """The row's reason for a build judged on the emulator."""
        return (f"speed not measured: this host lacks {', '.join(self.lacking)}, so its accuracy was judged under "
                f"qemu-x86_64 -cpu {self.emulator} (optimize on a host with those flags to time it)")


def lacking(target: Target) -> list[str]:
    """The flags the target's code uses that this host lacks (empty: its code runs here)."""
    return missing(target.requires, this_cpu().flags) if target.kind == "llvm" else []


def judging(target: Target) -> Judging:
    absent = lacking(target)
    return Judging(lacking=absent, emulator=cpu_for(target.requires) if absent else None)


def judged_where(target: Target, judged: Judging) -> str:
    if target.kind == "cuda":
        return "on this host's GPU"
    if target.is_host:
        return "on the target (this host)"
    if judged.here:
        return (f"on this host, standing in for {target.name}: it has every CPU flag the target's code uses, but "
                "its speed is this host's")
    compiled = (f"compiled builds' accuracy under qemu-x86_64 -cpu {judged.emulator}, their speed not measured"
                if judged.emulator else "compiled builds not judged")
    return (f"onnxruntime's rows on this host (onnxruntime picks its kernels where it runs); {compiled}: this host "
            f"lacks {', '.join(judged.lacking)}")


def not_judged(target: Target, judged: Judging) -> str | None:
    """Why a compiled build for `target` cannot be judged at all here (None: it can, here or emulated)."""
    if judged.here or judged.emulator:
        return None
    return (f"built for {target.name} but not judged: this host lacks {', '.join(judged.lacking)}, so neither its "
            "accuracy nor its speed was measured (optimize on a host with those flags)")
