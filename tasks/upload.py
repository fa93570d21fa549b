"""upload: copy the published artifact to S3/MinIO and verify it there; the local artifact is only read.

Settings: the kiln-s3 block named by KILN_S3_BLOCK, else the KILN_S3_* environment of the worker."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from kiln.artifact.remote import ObjectStore
from tasks.blocks import s3_settings
from tasks.retrying import transient_only


@task(name="check-upload", retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=transient_only)
def check_upload(uri: str) -> None:
    """Before hours of tuning: the URI parses, credentials are set, the bucket exists and accepts the key."""
    ObjectStore(s3_settings(), on_retry=get_run_logger().warning).check(uri)


@task(name="upload", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=transient_only)
def upload(artifact: str, uri: str) -> str:
    logger = get_run_logger()
    store = ObjectStore(s3_settings(), on_retry=logger.warning)
    remote = store.upload_artifact(Path(artifact), uri,
                                   progress=lambda done, total: logger.info("uploaded %d/%d files", done, total))
    logger.info("uploaded %s to %s (verified)", artifact, remote)
    return remote
