"""What a model registry is to kiln, whichever it is: the source URIs it resolves to a program, the outcome it
records on a model version, and the webhook deliveries it signs. MLflow and Hugging Face implement it
(kiln.registries.REGISTRIES); a new registry is one module and one line there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from kiln.artifact.outcome import OptimizeOutcome
    from kiln.config import Settings

TAG_LIMIT = 4000  # MLflow keeps tag values up to 5000 characters; the others take at least as much


class Rejected(Exception):
    """A webhook delivery kiln refuses: the HTTP status to answer and why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Trigger:
    """A verified delivery that asks for an optimization: which registry's model version, and where it is."""

    registry: str
    model: str
    version: str
    source: str
    event: str

    @property
    def key(self) -> str:
        """One per (registry, model, version): a registry's retries start nothing new."""
        return f"{self.registry}:{self.model}:{self.version}"


class Registry:
    """A model registry. Subclasses set what they support; the defaults say "not this one"."""

    name: ClassVar[str]
    schemes: ClassVar[tuple[str, ...]] = ()  # program sources it resolves, e.g. ("models:/", "runs:/")
    tags_versions: ClassVar[bool] = False  # whether a run's outcome can be written on the version

    def resolve(self, source: str, dest_root: Path, fetch_other: Callable[[str, Path], Path]) -> Path:
        """The program (folder or .onnx) behind `source`, fetched under dest_root; `fetch_other` fetches a
        location of another scheme (s3://) the registry hands out instead of serving the files itself."""
        raise NotImplementedError(f"{self.name} resolves no program sources")

    def tag(self, model: str, version: str, tags: dict[str, str]) -> None:
        raise NotImplementedError(f"{self.name} takes no tags on its versions")

    def delivery(self, headers: dict[str, str], body: bytes, cfg: Settings, now: float | None = None
                 ) -> Trigger | None:
        """Verify and read a webhook delivery: a Trigger, None for an event kiln does not act on, or Rejected."""
        raise Rejected(404, f"{self.name} sends no webhooks kiln understands")


def outcome_tags(outcome: OptimizeOutcome | None, error: str | None = None, run: str | None = None
                 ) -> dict[str, str]:
    """What a registry shows of a kiln run (None when it failed):
    kiln.status (published, kept-current or failed), kiln.selected, kiln.speedup (against onnxruntime),
    kiln.artifact (its upload URI where it was uploaded), kiln.image, kiln.profile (the shapes it accepts and
    where each range came from) and kiln.message; kiln.run is the Prefect flow run."""
    tags = {"kiln.run": run} if run else {}
    if outcome is None:
        return {**tags, "kiln.status": "failed", "kiln.message": (error or "the run failed")[:TAG_LIMIT]}
    tags["kiln.status"] = "published" if outcome.published else "kept-current"
    tags["kiln.selected"] = str(outcome.selected)
    if outcome.published and outcome.speedup is not None:
        tags["kiln.speedup"] = f"{outcome.speedup:.2f}x"
    if outcome.upload or outcome.artifact:
        tags["kiln.artifact"] = str(outcome.upload or outcome.artifact)
    if outcome.image:
        tags["kiln.image"] = str(outcome.image)
    tags["kiln.profile"] = outcome.manifest.profile.explain()[:TAG_LIMIT]
    if outcome.message:
        tags["kiln.message"] = str(outcome.message)[:TAG_LIMIT]
    return tags


def json_object(body: bytes) -> dict[str, Any]:
    import json

    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "the body must be a JSON object")
    return payload
