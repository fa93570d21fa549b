"""Model registries behind one interface (kiln.registries.base.Registry): which one resolves a source URI, tags a
version, or verifies a webhook. The rest of kiln asks this list and names no registry itself."""

from __future__ import annotations

from kiln.registries.base import Registry, Rejected, Trigger, outcome_tags
from kiln.registries.huggingface import HuggingFace
from kiln.registries.mlflow import MlflowRegistry

REGISTRIES: dict[str, Registry] = {r.name: r for r in (MlflowRegistry(), HuggingFace())}


def get(name: str) -> Registry | None:
    return REGISTRIES.get(name)


def source_schemes() -> tuple[str, ...]:
    """Every program-source scheme some registry resolves (models:/, runs:/, ...)."""
    return tuple(s for r in REGISTRIES.values() for s in r.schemes)


def for_source(location: str) -> Registry | None:
    return next((r for r in REGISTRIES.values() if location.startswith(r.schemes)), None) if location else None


def taggable() -> list[str]:
    """The registries whose versions take a run's outcome as tags."""
    return [n for n, r in REGISTRIES.items() if r.tags_versions]


__all__ = ["REGISTRIES", "Registry", "Rejected", "Trigger", "for_source", "get", "outcome_tags", "source_schemes",
           "taggable"]
