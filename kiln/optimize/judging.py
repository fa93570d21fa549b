"""Where a target's candidates are judged. A build runs here when this host has every CPU flag its code uses: then
the host stands in for the target (speed and accuracy measured here, the manifest says so). A build for a CPU above
this one (AVX-512 code on an AVX2 host) cannot run here: it is kept, but not judged, so it never ships untested.
"""

from __future__ import annotations

from kiln.artifact.target import Target
from kiln.runtime.cpu_flags import missing, this_cpu


def lacking(target: Target) -> list[str]:
    """The flags the target's code uses that this host lacks (empty: its code runs here)."""
    return missing(target.requires, this_cpu().flags) if target.kind == "llvm" else []


def judged_where(target: Target) -> str:
    if target.kind == "cuda":
        return "on this host's GPU"
    if target.is_host:
        return "on the target (this host)"
    return (f"on this host, standing in for {target.name}: it has every CPU flag the target's code uses, but its "
            "speed is this host's")


def not_judged(target: Target) -> str | None:
    """Why a build for `target` cannot be judged here (None: it can)."""
    absent = lacking(target)
    if not absent:
        return None
    return (f"built for {target.name} but not judged: this host lacks {', '.join(absent)}, so neither its accuracy "
            "nor its speed was measured (optimize on a host with those flags)")
