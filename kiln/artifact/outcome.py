"""What one optimize run ended with: the typed result the flow returns and every caller reads (the CLI, the
scheduled re-optimization, the web pages, the registries' tags), instead of a dict read by key."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from kiln.artifact.manifest import INCUMBENT, CandidateResult, Manifest


class OptimizeOutcome(BaseModel):
    published: bool  # False: the version in service stayed (nothing beat it)
    name: str
    selected: str  # the published candidate, or "current" when the version in service was kept
    artifact: str  # the published artifact's folder, or the kept version's
    manifest: Manifest  # the published artifact's manifest, or the kept version's
    speedup: float | None = None  # the confirmed speed-up over onnxruntime of what was published
    message: str | None = None  # why nothing new was published
    candidates: list[CandidateResult] = Field(default_factory=list)  # this run's table
    upload: str | None = None  # where the artifact was uploaded (s3://...)
    image: str | None = None  # the pushed image's reference (REGISTRY/NAME@sha256:...)
    tagged: bool | None = None  # a registry-started run: whether its version took the outcome's tags

    @classmethod
    def of_published(cls, manifest: Manifest, folder: Path) -> OptimizeOutcome:
        return cls(published=True, name=manifest.name, selected=manifest.selected, artifact=str(folder),
                   manifest=manifest, speedup=manifest.speedup_vs_baseline, candidates=manifest.candidates)

    @classmethod
    def of_kept(cls, incumbent: Path | str, candidates: list[CandidateResult], message: str | None
                ) -> OptimizeOutcome:
        manifest = Manifest.read(Path(incumbent))
        return cls(published=False, name=manifest.name, selected=INCUMBENT, artifact=str(incumbent),
                   manifest=manifest, message=message, candidates=candidates)
