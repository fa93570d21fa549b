"""A Prefect block for object storage, so credentials live in Prefect (UI: Blocks > kiln S3) instead of the
worker's environment. `kiln up` registers the type; a flow uses it when KILN_S3_BLOCK names one."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from kiln.artifact.remote import S3Settings
from kiln.config import settings
from kiln.errors import StorageError


class KilnS3(Block):
    _block_type_name = "kiln S3"
    _block_type_slug = "kiln-s3"
    _description = "An S3/MinIO endpoint and credentials that kiln uploads artifacts to and pulls them from."

    endpoint: str = Field(..., description="host:port of the S3/MinIO server")
    access_key: SecretStr = Field(..., description="access key id")
    secret_key: SecretStr = Field(..., description="secret access key")
    region: str | None = Field(None, description="region, if the server needs one")
    secure: bool = Field(True, description="https (false: plain http)")
    part_size_mb: int = Field(16, ge=5, description="files larger than this go up in parts")

    def settings(self) -> S3Settings:
        return S3Settings(endpoint=self.endpoint, access_key=self.access_key.get_secret_value(),
                          secret_key=self.secret_key.get_secret_value(), region=self.region, secure=self.secure,
                          part_size_mb=self.part_size_mb)


def s3_settings() -> S3Settings:
    """The block named by KILN_S3_BLOCK, else the KILN_S3_* environment."""
    cfg = settings()
    name = cfg.s3_block
    if not name:
        return S3Settings.from_settings(cfg)
    try:
        return KilnS3.load(name).settings()
    except ValueError as exc:
        raise StorageError(f"no kiln-s3 block named {name!r} ({exc})",
                           hint="create it in the Prefect UI (Blocks > kiln S3) or unset KILN_S3_BLOCK") from None
