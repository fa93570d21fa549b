"""image: build the model's runtime image, push it to the registry, record its digest in the manifest."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from kiln.ship import build_model_image, check_repository, connect
from tasks.retrying import transient_only


@task(name="check-image", retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=transient_only)
def check_image(repository: str) -> None:
    """Before hours of tuning: the reference is valid and a Docker engine answers."""
    check_repository(repository)
    connect()


@task(name="image", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=transient_only)
def image(artifact: str, repository: str, push: bool = True) -> dict:
    logger = get_run_logger()
    entry = build_model_image(Path(artifact), repository, push=push, log=logger.info)
    logger.info("image %s", entry.reference or f"{entry.repository}:{entry.tags[0]}")
    return entry.model_dump(mode="json")
