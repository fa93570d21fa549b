"""The candidate registry and what a builder receives and returns.

A candidate is a way to run the model: a backend, its run settings, maybe a transformed model file. Each is
registered once, by the module that builds it, with the stage that produces it:
- "baseline": the unoptimized model in onnxruntime, the reference every other candidate is measured against;
- "transform": built in seconds from the model (graph levels, quantization) by `build`;
- "compile": built by the TVM compile stage (tuning, cached by content).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from kiln.artifact.manifest import RunSettings
from kiln.errors import KilnError

Stage = Literal["baseline", "transform", "compile"]


@dataclass
class BuildContext:
    """Everything a builder may use: the user's model, the prepared (static-shape) model, a folder to write
    to, and calibration feeds (None when the program has no data to calibrate on)."""

    model: Path
    prepared: Path
    out_dir: Path
    calibration: list[dict[str, np.ndarray]] | None = None
    calibration_method: str = "minmax"


@dataclass
class Built:
    path: Path
    settings: RunSettings


@dataclass
class Candidate:
    name: str
    backend: str
    description: str
    stage: Stage = "transform"
    build: Callable[[BuildContext], Built] | None = None
    needs_calibration: bool = False


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
