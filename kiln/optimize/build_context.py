"""What a candidate's builder receives (BuildContext) and returns (Built), or raises (Skipped).

Apart from the registry so that the int8 algorithms (kiln.optimize.quantize), which the builders call, can use
them too without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.artifact.manifest import RunSettings
from kiln.cpu import Int8Scheme
from kiln.errors import KilnError


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
    accuracy: Any = None  # kiln.optimize.quantize.accuracy_aware.AccuracyCheck, set in the build child
    max_fallback_rounds: int = 4
    fallback_seconds: float = 900.0
    fallback_margin: float = 0.5
    int8: Int8Scheme = field(default_factory=Int8Scheme.current)


@dataclass
class Built:
    path: Path
    settings: RunSettings
    attempts: list[Built] = field(default_factory=list)  # accuracy-aware retries, each its own candidate row
