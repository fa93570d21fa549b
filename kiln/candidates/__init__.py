"""Candidates as named data, like TVM's named pipelines: each module registers what it builds.

A candidate is a way to run the model (backend + settings + maybe a transformed model file). The flow
builds the requested ones, evaluates each exactly like the baseline, and the gate picks among them.
"""

from kiln.candidates.base import REGISTRY, BuildContext, Built, Candidate, get, names, register
from kiln.candidates import ort_fp32, ort_int8_dynamic, ort_int8_static  # noqa: F401  (registration)

# built by the flow itself, not registered here: the onnxruntime baseline and TVM compilation
BUILTIN = ("onnxruntime", "tvm")
# what runs when nothing is said: compilation, the cheaper graph level, and both int8 schemes (static int8 is
# skipped, with that reason, when the program has no data to calibrate on)
DEFAULT = ("onnxruntime", "tvm", "ort-fp32-basic", "ort-int8-dynamic", "ort-int8-static")


def all_names() -> list[str]:
    return [*BUILTIN, *names()]


__all__ = ["BUILTIN", "DEFAULT", "REGISTRY", "BuildContext", "Built", "Candidate", "all_names", "get", "names",
           "register"]
