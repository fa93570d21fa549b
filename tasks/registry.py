"""tag-model-version: write the run's outcome back to the model registry version that started it."""

from __future__ import annotations

from prefect import get_run_logger, task

from kiln import registries
from kiln.optimize.request import RegistryVersion
from tasks.retrying import transient_only


@task(name="tag-model-version", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=transient_only)
def tag_model_version(version: RegistryVersion, tags: dict[str, str]) -> None:
    registries.REGISTRIES[version.registry].tag(version.name, version.version, tags)
    get_run_logger().info("tagged %s %s version %s: %s", version.registry, version.name, version.version, tags)
