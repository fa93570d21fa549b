"""The candidate registry and what a builder receives and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.errors import KilnError


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
    settings: dict = field(default_factory=dict)


@dataclass
class Candidate:
    name: str
    backend: str
    description: str
    build: Callable[[BuildContext], Built]
    needs_calibration: bool = False


REGISTRY: dict[str, Candidate] = {}


def register(candidate: Candidate) -> Candidate:
    REGISTRY[candidate.name] = candidate
    return candidate


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Candidate:
    if name not in REGISTRY:
        raise KilnError(f"unknown candidate {name!r}", hint=f"choose from {['onnxruntime', 'tvm', *REGISTRY]}")
    return REGISTRY[name]
