"""Candidates as named data, like TVM's named pipelines: each module registers what it builds.

A candidate is a way to run the model (backend + settings + maybe a transformed model file). The flow
builds the requested ones, evaluates each exactly like the baseline, and the gate picks among them.
"""

from kiln.candidates.base import REGISTRY, BuildContext, Built, Candidate, get, names, register
from kiln.candidates import ort_fp32, ort_int8_dynamic, ort_int8_static  # noqa: F401  (registration)

__all__ = ["REGISTRY", "BuildContext", "Built", "Candidate", "get", "names", "register"]
