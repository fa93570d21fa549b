"""Candidates as named data, like TVM's named pipelines: each module registers what it builds.

The flow builds the requested ones, evaluates each exactly like the baseline, and the gate picks among them.
The baseline's name, the set of candidates and the default set are defined here and nowhere else.
"""

from kiln.artifact.manifest import BASELINE
from kiln.errors import KilnError
from kiln.optimize.candidates import (  # noqa: F401
    baseline,
    ort_fp32,
    ort_fused,
    ort_int8_dynamic,
    ort_int8_static,
    tvm,
)
from kiln.optimize.candidates.base import (
    REGISTRY,
    BuildContext,
    Built,
    Candidate,
    Skipped,
    Stage,
    get,
    names,
    register,
)

# what runs when nothing is said: the reference, compilation, the cheaper graph level, and both int8 schemes
# (static int8 is skipped, with that reason, when the program has no data to calibrate on; the fused ones
# when the model is not a transformer)
DEFAULT = (BASELINE, "tvm", "ort-fp32-basic", "ort-int8-dynamic", "ort-int8-static", "ort-fp32-fused",
           "ort-int8-fused-dynamic", "ort-int8-fused-smooth", "ort-int8-fused-static")


def all_names() -> list[str]:
    return names()


def check(chosen: list[str]) -> list[str]:
    """The chosen names, known and de-duplicated, with the baseline first (it is always measured)."""
    unknown = sorted(set(chosen) - set(REGISTRY))
    if unknown:
        raise KilnError(f"unknown candidates {unknown}", hint=f"choose from {', '.join(names())}")
    return list(dict.fromkeys([BASELINE, *chosen]))


def of_stage(chosen: list[str], stage: Stage) -> list[str]:
    return [n for n in chosen if REGISTRY[n].stage == stage]


__all__ = ["BASELINE", "DEFAULT", "REGISTRY", "BuildContext", "Built", "Candidate", "Skipped", "all_names", "check",
           "get", "names", "of_stage", "register"]
