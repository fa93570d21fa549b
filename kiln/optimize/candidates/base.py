"""The candidate registry and what a builder receives and returns.

A candidate is a way to run the model: a backend, its run settings, maybe a transformed model file. Each is
registered once, by the module that builds it, with the stage that produces it:
- "baseline": the unoptimized model in onnxruntime, the reference every other candidate is measured against;
- "transform": built in seconds from the model (graph levels, quantization) by `build`;
- "compile": built by the TVM compile stage (tuning, cached by content).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kiln.artifact.manifest import RunSettings
from kiln.errors import KilnError

Stage = Literal["baseline", "transform", "compile"]


class Skipped(KilnError):
    """The candidate does not apply to this model (reported as `skipped: why`, never as a failure)."""


@dataclass
class BuildContext:
    """Everything a builder may use: the user's model, the prepared (static-shape) model, a folder to write
    to, calibration feeds (None when the program has no data to calibrate on), and what accuracy-aware int8
    needs: a check of the program's ranges on the calibration split, and its budget."""

    model: Path
    prepared: Path
    out_dir: Path
    calibration: list[dict[str, np.ndarray]] | None = None
    calibration_method: str = "minmax"
    transformer: str | None = None  # the program's model type for fusion; None: detected; "none": off
    accuracy: Any = None  # kiln.optimize.candidates.accuracy_aware.AccuracyCheck, set in the build child
    max_fallback_rounds: int = 4
    fallback_seconds: float = 900.0
    fallback_margin: float = 0.5


@dataclass
class Built:
    path: Path
    settings: RunSettings
    attempts: list[Built] = field(default_factory=list)  # accuracy-aware retries, each its own candidate row


@dataclass
class Candidate:
    name: str
    backend: str
    description: str
    stage: Stage = "transform"
    build: Callable[[BuildContext], Built] | None = None
    needs_calibration: bool = False
    accuracy_aware: bool = False  # int8: retried with the worst nodes in fp32 when a range fails
    graph_passes: tuple[str, ...] = ()  # compile stage: kiln.compiler.passes run beside the exact default ones


REGISTRY: dict[str, Candidate] = {}


def register(candidate: Candidate) -> Candidate:
    if candidate.stage != "compile" and candidate.build is None:
        raise ValueError(f"candidate {candidate.name!r} needs a build function")
    REGISTRY[candidate.name] = candidate
    return candidate


_STAGE_ORDER = {"baseline": 0, "compile": 1, "transform": 2}


def names() -> list[str]:
    """Every registered name: the baseline, then compilation, then the transforms in registration order."""
    return sorted(REGISTRY, key=lambda n: _STAGE_ORDER[REGISTRY[n].stage])


def get(name: str) -> Candidate:
    if name not in REGISTRY:
        raise KilnError(f"unknown candidate {name!r}", hint=f"choose from {names()}")
    return REGISTRY[name]
