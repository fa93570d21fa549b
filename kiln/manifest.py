"""The artifact manifest: everything needed to trust, reproduce and serve an optimized model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from kiln.errors import ArtifactError
from kiln.specs import IndexGuard, TensorSpec

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class LatencyMs(BaseModel):
    p50: float
    p90: float


class MetricResult(BaseModel):
    value: float | None
    range: str
    passed: bool


class CandidateResult(BaseModel):
    """One candidate as evaluated: where it came from, how fast, how accurate, whether it qualified."""

    name: str
    backend: str
    latency_ms: LatencyMs | None = None
    metrics: dict[str, MetricResult] = Field(default_factory=dict)
    passed: bool = False
    reasons: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    build_seconds: float | None = None


class ModelInfo(BaseModel):
    path: str
    sha256: str
    source_sha256: str


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    id: str = ""
    name: str
    version: int | None = None  # 1, 2, ... per name in the store that published it
    created_at: str
    model: ModelInfo
    program: dict[str, Any]
    target: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    guards: list[IndexGuard] = Field(default_factory=list)
    dataset: str
    candidates: list[CandidateResult]
    selected: str
    backend: str
    settings: dict[str, Any] = Field(default_factory=dict)
    speedup_vs_baseline: float
    tuning: dict[str, Any] | None = None
    protocol: dict[str, Any] | None = None  # generated gRPC code in protocol/ (kiln.protocol)
    options: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    # where it was shipped: recorded after publishing; not part of the artifact's hash
    uploads: list[dict[str, Any]] = Field(default_factory=list)
    images: list[dict[str, Any]] = Field(default_factory=list)

    def selected_p50(self) -> float | None:
        sel = next((c for c in self.candidates if c.name == self.selected), None)
        return sel.latency_ms.p50 if sel and sel.latency_ms else None

    def write(self, folder: Path) -> None:
        """Atomically: a reader sees the old manifest or the new one, never a torn file."""
        tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        os.replace(tmp, folder / MANIFEST)

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
