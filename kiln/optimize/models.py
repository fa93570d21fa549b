"""What the stages hand to each other: small, serializable descriptions; bulk data stays in the work folder.

They cross process boundaries (Prefect may run tasks elsewhere), so they hold paths and specs, never arrays.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from kiln.artifact.manifest import CandidateResult, RunSettings, TuningInfo
from kiln.artifact.specs import IndexGuard, Profile, TensorSpec
from kiln.config import kiln_home
from kiln.optimize.traffic import Traffic
from kiln.program.loader import LoadedProgram, load_program


class CheckedProgram(BaseModel):
    """A program that passed validation."""

    location: str
    source: str  # what load_program() takes again: the program folder, or the bare .onnx
    root: str
    name: str
    model_path: str
    model_sha256: str
    program_sha256: str
    # what the user declared (`--shape`, `--dim`, the program's): only ever read to load the program again
    shapes: dict[str, list[int]]
    dims: dict[str, tuple[int, int]] = Field(default_factory=dict)
    # the one shape contract every stage reads: the specs (-1: a dynamic dimension) and the profile of those
    # dimensions (ranges, batch, pad values, output axes; empty: static)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    profile: Profile = Field(default_factory=Profile)
    dim_values: dict[str, list[int]] = Field(default_factory=dict)  # each varying dimension, per sample (buckets)
    guards: list[IndexGuard] = Field(default_factory=list)
    dataset: str
    samples: int
    has_labels: bool
    allow_nonfinite: bool = False
    requirements: list[str] = Field(default_factory=list)  # what the mapping code imports (pip requirements)
    calibration_method: str = "minmax"
    max_fallback_rounds: int = 4
    fallback_seconds: float = 900.0
    fallback_margin: float = 0.5
    transformer: str | None = None
    targets: list[str] = Field(default_factory=list)  # the program's (normalized names); the request's win
    proto: str | None = None  # the program's protocol: what publish needs without importing program.py again
    request: str | None = None
    response: str | None = None
    unsupported_ops: dict[str, list[str]] = Field(default_factory=dict)  # op type -> nodes TVM cannot import

    @property
    def padding(self) -> dict[str, float]:
        """The program's pad value per input, as the profile's dimensions carry them."""
        return {k: v for d in self.profile.dims for k, v in d.padding.items()}

    def load(self) -> LoadedProgram:
        """The user's program again: only ever called in a child process (kiln.optimize.isolation)."""
        return load_program(self.source, self.shapes, self.dims)

    @property
    def work_dir(self) -> Path:
        path = kiln_home() / "work" / self.program_sha256[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path


class PreparedModel(BaseModel):
    path: str
    sha256: str
    guards: list[IndexGuard] = Field(default_factory=list)


class ReferenceData(BaseModel):
    """Evaluation feeds, labels and the reference (onnxruntime, unoptimized model) outputs, on disk."""

    path: str
    samples: int
    feeds: int
    metrics: dict[str, float]
    calibration_path: str | None = None
    calibration_source: str | None = None
    # samples kept from every choice (kiln.optimize.defaults.HELD_OUT_FRACTION): the winner's reported accuracy
    held_out_path: str | None = None
    held_out_samples: int = 0
    held_out_metrics: dict[str, float] = Field(default_factory=dict)  # the reference's own scores there


class BuiltCandidate(BaseModel):
    """A candidate ready to evaluate, or one that failed to build (error set)."""

    name: str
    backend: str
    path: str | None = None
    settings: RunSettings = Field(default_factory=RunSettings)
    build_seconds: float | None = None
    cached: bool = False
    tuning: TuningInfo | None = None
    error: str | None = None
    baseline: bool = False  # the reference itself: it must run, or nothing can be judged
    emulator: str | None = None  # its code does not run here: its accuracy is judged on this qemu CPU model
    not_timed: str | None = None  # why its speed is not measured (with the emulator)
    judge_on_device: bool = False  # its code does not run here: its accuracy is judged on the run's device


class Evaluation(BaseModel):
    candidates: list[CandidateResult]
    built: list[BuiltCandidate]
    traffic: Traffic | None = None  # which inputs the latencies were timed over, and the shape buckets
    device_rounds: int = 0  # timing rounds a device served (kiln optimize --device)
