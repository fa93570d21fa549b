"""What a candidate is; what its builder receives and returns is kiln.optimize.build_context.

A candidate is a way to run the model: a backend, its run settings, maybe a transformed model file. The
registry (kiln.optimize.candidates) lists each as data, with the stage that produces it and its builder named
as "module:function", imported only when it builds: listing candidates (the CLI's help, the web form) imports
no onnx or onnxruntime.
- "baseline": the unoptimized model in onnxruntime, the reference every other candidate is measured against;
- "transform": built in seconds from the model (graph levels, quantization) by `build`;
- "compile": built by the TVM compile stage (tuning, cached by content).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from kiln.errors import KilnError
from kiln.optimize.build_context import BuildContext, Built, Skipped

Stage = Literal["baseline", "transform", "compile"]
__all__ = ["REGISTRY", "BuildContext", "Built", "Candidate", "Skipped", "Stage", "get", "names", "register"]


@dataclass(frozen=True)
class Candidate:
    name: str
    backend: str
    description: str
    stage: Stage = "transform"
    builder: str | None = None  # "module:function" taking a BuildContext, returning a Built
    needs_calibration: bool = False
    accuracy_aware: bool = False  # int8: retried with the worst nodes in fp32 when a range fails
    graph_passes: tuple[str, ...] = ()  # compile stage: kiln.compiler.passes run beside the exact default ones
    # compile stage: compile the model this transform candidate built (its int8 decisions, fp32 fallbacks
    # included) with kiln's int8 lowering (kiln.compiler.int8) instead of the original model
    quantized_from: str | None = None
    # int8 compile stage: the dot instruction's sums, exact (VNNI, or widened to int16) or saturating (vpmaddubsw's
    # int16 pair sums: faster without VNNI, less accurate); the ranges judge which ships
    int8_sums: Literal["exact", "saturating"] = "exact"

    def __post_init__(self) -> None:
        if self.stage != "compile" and not self.builder:
            raise ValueError(f"candidate {self.name!r} needs a builder")

    def build(self, ctx: BuildContext) -> Built:
        module, _, function = (self.builder or "").partition(":")
        return getattr(importlib.import_module(module), function)(ctx)


REGISTRY: dict[str, Candidate] = {}


def register(*candidates: Candidate) -> None:
    for candidate in candidates:
        REGISTRY[candidate.name] = candidate


_STAGE_ORDER = {"baseline": 0, "compile": 1, "transform": 2}


def names() -> list[str]:
    """Every registered name: the baseline, then compilation, then the transforms in registration order."""
    return sorted(REGISTRY, key=lambda n: _STAGE_ORDER[REGISTRY[n].stage])


def get(name: str) -> Candidate:
    if name not in REGISTRY:
        raise KilnError(f"unknown candidate {name!r}", hint=f"choose from {names()}")
    return REGISTRY[name]
