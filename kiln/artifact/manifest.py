"""The artifact manifest: everything needed to trust, reproduce and serve an optimized model.

Every section is a typed model; the JSON written is what earlier versions wrote, so artifacts stay readable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln.artifact.layout import MANIFEST, PROGRAM_DIR, V2_SERVICE_NAME
from kiln.artifact.specs import IndexGuard, Profile, TensorSpec
from kiln.artifact.target import Target
from kiln.errors import ArtifactError
from kiln.fs import atomic_file

SCHEMA_VERSION = 1
BASELINE = "onnxruntime"  # the unoptimized model in onnxruntime: what every speed-up is measured against
INCUMBENT = "current"  # the version in service, when a run measures it beside the challengers


class LatencyMs(BaseModel):
    """Milliseconds per call. `rounds` holds the median of each interleaved timing round: candidates timed in
    the same run are compared round by round, which cancels what the shared machine did meanwhile."""

    p50: float
    p90: float
    p10: float | None = None
    runs: int | None = None
    rounds: list[float] = Field(default_factory=list)
    buckets: dict[str, float] = Field(default_factory=dict)  # p50 per shape bucket, where shapes vary


class MetricResult(BaseModel):
    value: float | None
    range: str
    passed: bool
    worst_sample: float | None = None  # per-position metrics: the share of the worst sample's positions


class RunSettings(BaseModel):
    """How a backend runs the selected module; what `kiln.load` and the server reproduce."""

    model_config = ConfigDict(extra="allow")  # a newer kiln may add settings; keep them

    threads: int | None = None
    optimization: Literal["disable", "basic", "extended", "all"] | None = None  # onnxruntime graph level
    device: Literal["cpu", "cuda"] | None = None  # tvm
    spin: bool | None = None  # onnxruntime intra-op spinning (servers turn it off for short models)
    quantization: str | None = None
    int8_isa: str | None = None  # the int8 instruction set quantized for (kiln.cpu): U8S8 saturates without VNNI
    calibration_feeds: int | None = None
    fusion: str | None = None  # onnxruntime transformer fusions applied, e.g. "6 Attention, 12 SkipLayerNorm..."
    kept_fp32: list[str] | None = None  # accuracy-aware int8: the nodes left unquantized
    quantized_ops: list[str] | None = None  # int8 QDQ quantizing only these operator types (None: every one)
    fallback_round: int | None = None
    calibration_check: str | None = None  # what the calibration split said of the ranges
    buckets: list[int] | list[list[int]] | None = None  # TVM per-bucket builds: the value of `bucket_dim` each
    # is compiled at; for a grid, the values of `bucket_dims` (one list per build)
    bucket_dim: str | None = None
    bucket_dims: list[str] | None = None  # a grid of two dimensions (absent in artifacts from before grids)

    def bucket_grid(self) -> tuple[list[str], list[tuple[int, ...]]]:
        """(the bucketed dimensions, each build's values): one reading of the 1-D and the 2-D forms."""
        dims = self.bucket_dims or ([self.bucket_dim] if self.bucket_dim else [])
        return dims, [tuple(b) if isinstance(b, list) else (b,) for b in self.buckets or []]
    padding: dict[str, float] | None = None  # kept for old readers: the runner pads with the profile's Dim.padding
    version: int | None = None  # the incumbent's: the version in service measured beside the challengers
    artifact: str | None = None

    def merged(self, **overrides: Any) -> RunSettings:
        """These settings with `overrides` on top (None overrides nothing)."""
        return self.model_copy(update={k: v for k, v in overrides.items() if v is not None})


class Speedup(BaseModel):
    """How many times faster than a reference, measured in the same run: the median of the per-round ratios,
    with a bootstrap interval of that median (what the noise of the machine allows us to claim)."""

    value: float
    low: float
    high: float

    def beyond_noise(self, min_gain: float = 0.0) -> bool:
        """Faster even at the low end of the interval, and by at least `min_gain` (a fraction of latency)."""
        return self.low > 1.0 and self.value >= 1.0 / (1.0 - min_gain)

    def describe(self) -> str:
        if abs(self.high - self.low) < 5e-3:
            return f"{self.value:.2f}x"
        return f"{self.value:.2f}x (90% interval {self.low:.2f}-{self.high:.2f}x)"


class CandidateResult(BaseModel):
    """One candidate as evaluated: where it came from, how fast, how accurate, whether it qualified."""

    name: str
    backend: str
    latency_ms: LatencyMs | None = None
    metrics: dict[str, MetricResult] = Field(default_factory=dict)
    passed: bool = False  # inside every metric range
    eligible: bool = False  # passed, and faster than the baseline beyond the noise (the baseline itself: passed)
    reasons: list[str] = Field(default_factory=list)  # why not passed, or why not eligible
    notes: list[str] = Field(default_factory=list)  # what else to know (a tuned candidate's trials and failures)
    speedup: Speedup | None = None  # vs the baseline, set by the gate
    settings: RunSettings = Field(default_factory=RunSettings)
    build_seconds: float | None = None


class Confirmation(BaseModel):
    """The winner timed again after the gate chose it, in fresh interleaved rounds over several evaluation inputs
    (the selection rounds used one and chose among many rows, so their best ratio is biased upward), and its
    accuracy on held-out samples that no decision saw. The artifact's speed-up is this one."""

    inputs: int  # evaluation inputs each timed call ran through, one after another (latencies are per input)
    latency_ms: dict[str, LatencyMs]  # the winner, the baseline and, when there is one, the incumbent
    speedup: Speedup  # the winner against the baseline
    vs_incumbent: Speedup | None = None
    held_out_samples: int = 0
    held_out: dict[str, MetricResult] = Field(default_factory=dict)  # the winner's metrics on those samples
    held_out_passed: bool | None = None  # None: the evaluation split was too small to hold samples out
    device_rounds: int = 0  # timing rounds a device served (kiln optimize --device: the latencies are its)

    def describe(self) -> str:
        held = ", ".join(f"{n} {m.value:.4g}" for n, m in self.held_out.items() if m.value is not None)
        return (f"{self.speedup.describe()} {BASELINE}'s speed, confirmed in fresh interleaved rounds over "
                f"{self.inputs} inputs; " + (f"on {self.held_out_samples} held-out samples: {held}" if held else
                                             "no samples held out (too few to share)"))


class ModelInfo(BaseModel):
    path: str
    sha256: str
    source_sha256: str


class ProgramInfo(BaseModel):
    """The program the artifact was made from, saved in program/."""

    sha256: str
    path: str = f"{PROGRAM_DIR}/"
    shapes: dict[str, list[int]] = Field(default_factory=dict)
    source: str  # where it was given (a path, file:// or s3:// URI)
    file: str = "program.py"  # the program's .py in program/ (one of several in a folder)
    allow_nonfinite: bool = False  # the program accepts NaN/Inf inputs (servers refuse them otherwise)
    requirements: list[str] = Field(default_factory=list)  # pip requirements of the mapping code (in its image)
    padding: dict[str, float] = Field(default_factory=dict)  # input -> pad value, as declared (Dim.padding: used)


class TaskTuning(BaseModel):
    """One tuning task (a fused kernel): its trials, the failed ones, and the best latency measured."""

    name: str
    weight: float
    flop: float = 0.0
    trials: int
    failed_trials: int
    build_failures: int = 0
    run_failures: int = 0
    best_us: float | None = None
    first_error: str | None = None
    start_us: float | None = None  # best known before the search: this model's earlier or the CPU's shared records
    int8: bool = False  # one of kiln's int8 dense kernels: its GOP/s is a share of Int8Lowering.peak_gops


class Int8Lowering(BaseModel):
    """kiln's int8 compiler on a TVM int8 candidate: the dot intrinsic its kernels use, the CPU's detected int8
    instruction set, and each quantized matmul lowered to an integer kernel or left as it was (and why)."""

    intrinsic: str
    isa: str
    exact: bool  # int32 sums without the int16 saturation of vpmaddubsw
    lowered: list[str] = Field(default_factory=list)
    not_lowered: list[str] = Field(default_factory=list)
    peak_gops: float | None = None  # cores x clock x the intrinsic's int8 ops per cycle


class TuningInfo(BaseModel):
    """The TVM search behind a tvm candidate; `database` is tuning/ inside the artifact once published.
    `trials` is the budget, `trials_run` what was measured; `estimated_ms` is the tuner's own sum of the best
    kernels, weighted by how often each runs (not a measured end-to-end latency)."""

    trials: int
    tasks: int
    records_added: int
    seconds: float
    database: str
    target: dict[str, Any]
    max_trials_per_task: int | None = None
    time_budget_s: float | None = None
    trials_run: int | None = None
    failed_trials: int = 0
    stopped_by: str | None = None  # "trials", "time" or "search space"
    estimated_ms: float | None = None
    per_task: list[TaskTuning] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    pipeline: list[str] = Field(default_factory=list)  # kiln's graph passes that changed the model
    seeded_records: int = 0  # copied from this CPU's shared database: kernels earlier models tuned
    shared_records_added: int = 0
    cost_model: str | None = None  # "xgb", or "random" where xgboost is missing (None: no search ran)
    first_round: int | None = None  # trials per task in the first round, sized from the time budget
    int8: Int8Lowering | None = None
    measured_on: str | None = None  # KEY@HOST:PORT: the trials were timed on the devices under that key
    device_failed_trials: int = 0  # of failed_trials: the device side broke (lost mid-trial, none free in time)


class DeviceMeasurements(BaseModel):
    trials: int = 0  # TVM tuning trials the device timed for this run (failed ones included)
    rounds: int = 0  # kiln's timing rounds (selection and confirmation) it served


class DeviceInfo(BaseModel):
    """The device the run measured on (kiln optimize --device KEY@HOST:PORT): TVM's trials and every timing round
    ran there, so every latency in this manifest is the device's, not the optimizer's host's."""

    key: str
    tracker: str  # HOST:PORT
    cpu: str
    cores: int
    flags: list[str] = Field(default_factory=list)  # CPUID, as the device read them
    versions: dict[str, str] = Field(default_factory=dict)  # TVM, onnxruntime, kiln on the device
    devices: int = 1  # under the key when the run started
    measurements: DeviceMeasurements = Field(default_factory=DeviceMeasurements)
    timings: str = "measured on the device"


class ProtocolInfo(BaseModel):
    """The generated gRPC code in protocol/: the program's service (None: the generic tensor protocol only)."""

    service: str | None = None
    request: str | None = None
    response: str | None = None
    proto: str | None = None  # the program's .proto file name inside protocol/
    v2_service: str = V2_SERVICE_NAME


class Upload(BaseModel):
    uri: str
    at: str


class ImageRecord(BaseModel):
    repository: str
    tags: list[str]
    image_id: str
    runtime: str
    built_at: str
    digest: str | None = None
    reference: str | None = None
    runtime_reference: str | None = None


class TargetBuild(BaseModel):
    """The build selected for one target: what it was compiled for, the CPU flags its code uses (none for
    onnxruntime, which picks its kernels by CPUID when it loads), and where its speed and accuracy were judged.
    `kiln.load` refuses a build whose flags this CPU lacks (kiln.runtime.cpu_flags) instead of dying with SIGILL.

    A one-target artifact keeps its build's module, settings and figures in the manifest's own fields (None
    here); an artifact for several targets (a fleet) holds them per build, and the manifest's own fields repeat
    its first build's (the least demanding), so that readers from before fleets load a build that runs widely."""

    target: Target
    selected: str
    backend: str
    requires: list[str] = Field(default_factory=list)
    judged: str = ""  # "on the target" (host), "on this host, standing in for the target (CPU ...)"
    model: ModelInfo | None = None
    settings: RunSettings | None = None
    speedup_vs_baseline: float | None = None
    confirmation: Confirmation | None = None
    candidates: list[CandidateResult] = Field(default_factory=list)
    tuning: TuningInfo | None = None


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    id: str = ""
    name: str
    version: int | None = None  # 1, 2, ... per name in the store that published it
    created_at: str
    model: ModelInfo
    program: ProgramInfo
    target: str
    builds: list[TargetBuild] = Field(default_factory=list)  # per target (empty: published before targets)
    inputs: list[TensorSpec]  # -1: a dynamic dimension, whose range `profile` gives
    outputs: list[TensorSpec]
    guards: list[IndexGuard] = Field(default_factory=list)
    profile: Profile = Field(default_factory=Profile)  # the shapes it accepts (empty: the inputs' one shape)
    timing: str | None = None  # what the latencies were timed over (the inputs, the shape buckets' shares)
    dataset: str
    candidates: list[CandidateResult]
    selected: str
    backend: str
    settings: RunSettings = Field(default_factory=RunSettings)
    speedup_vs_baseline: float  # the confirmation's, where there is one
    confirmation: Confirmation | None = None
    tuning: TuningInfo | None = None
    protocol: ProtocolInfo | None = None
    device: DeviceInfo | None = None  # where the latencies were measured, when not on the optimizer's host
    request: dict[str, Any] = Field(default_factory=dict)  # what the run was asked (OptimizeRequest), to repeat it
    files: dict[str, str] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    # where it was shipped: recorded after publishing; not part of the artifact's hash
    uploads: list[Upload] = Field(default_factory=list)
    images: list[ImageRecord] = Field(default_factory=list)

    @model_validator(mode="after")
    def _padding_of_old_manifests(self) -> Manifest:
        """Manifests written before dimensions carried their pad values kept them on the program only."""
        if self.program.padding and not any(d.padding for d in self.profile.dims):
            self.profile = self.profile.with_padding(self.program.padding)
        return self

    @property
    def is_fleet(self) -> bool:
        """Several targets, each with its own build (TargetBuild.model)."""
        return len(self.builds) > 1

    def build_for(self, target: str) -> TargetBuild | None:
        """The build for the target named `target` (kiln.targets' normalized name); an artifact published before
        targets were recorded was built for this host."""
        if not self.builds:
            return TargetBuild(target=Target(name="host"), selected=self.selected, backend=self.backend) \
                if target == "host" else None
        return next((b for b in self.builds if b.target.name == target), None)

    def view(self, build: TargetBuild) -> Manifest:
        """This manifest as one build of it: the fields a loader reads (model, backend, settings, figures) are
        that build's, and `builds` holds it alone."""
        if build.model is None:  # a one-target artifact: its own fields are the build's
            return self.model_copy(update={"builds": [build]})
        return self.model_copy(update={
            "model": build.model, "selected": build.selected, "backend": build.backend,
            "settings": build.settings or RunSettings(), "candidates": build.candidates or self.candidates,
            "speedup_vs_baseline": build.speedup_vs_baseline if build.speedup_vs_baseline is not None
            else self.speedup_vs_baseline, "confirmation": build.confirmation, "tuning": build.tuning,
            "target": build.target.name, "builds": [build]})

    def selected_p50(self) -> float | None:
        sel = next((c for c in self.candidates if c.name == self.selected), None)
        return sel.latency_ms.p50 if sel and sel.latency_ms else None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    def write(self, folder: Path) -> None:
        """Atomically: a reader sees the old manifest or the new one, never a torn file."""
        with atomic_file(folder / MANIFEST) as tmp:
            tmp.write_text(self.to_json())

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise ArtifactError("not an artifact (no manifest.json)", where=str(folder),
                                hint="give the folder printed by `kiln optimize`")
        try:
            return cls.model_validate_json(path.read_text())
        except Exception as exc:
            raise ArtifactError(f"manifest.json is unreadable: {str(exc).splitlines()[0]}", where=str(path)) from None


def speedup(baseline: CandidateResult | None, candidate: CandidateResult) -> float | None:
    """How many times faster than the baseline (p50); None when either was not measured."""
    if not baseline or not baseline.latency_ms or not candidate.latency_ms or candidate.latency_ms.p50 <= 0:
        return None
    return baseline.latency_ms.p50 / candidate.latency_ms.p50


def versions() -> dict[str, str]:
    """Versions of everything that shaped the artifact (read from metadata: no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist, key in [("kiln", "kiln"), ("apache-tvm", "tvm"), ("apache-tvm-ffi", "tvm_ffi"),
                      ("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("numpy", "numpy")]:
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "absent"
    return out
