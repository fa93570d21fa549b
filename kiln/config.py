"""kiln's settings: the one place that reads the environment (KILN_* variables and a `.env` file).

Every setting is a field of `Settings`, named like its variable without the prefix (`KILN_S3_PART_MB` ->
`s3_part_mb`); the few that belong to other tools (PREFECT_API_URL, PREFECT_HOME, DOCKER_HOST) keep their own
names. `settings()` reads them afresh on each call, so a test or a `kiln up` that changes the environment is
seen at once; a value that does not parse is a `ConfigError` naming the variable, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from kiln.errors import KilnError


class ConfigError(KilnError):
    """An environment variable (or `.env` entry) holds a value kiln cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_file=".env", extra="ignore", populate_by_name=True)

    # where kiln keeps its state: programs, work folders, caches, tuning databases, the store
    home: Path = Field(default_factory=lambda: Path.home() / ".kiln")
    store: Path | None = None  # default: HOME/store
    max_archive_mb: float = Field(1024.0, gt=0)
    max_input_mb: float = Field(4096.0, gt=0)  # what the declared input shapes may need for the feeds kiln makes

    # child processes: the user's program (import, loaders, metrics) and each candidate's build and evaluation
    program_timeout_s: float = Field(600.0, gt=0)
    # importing program.py alone (inside the above): a program that loops at import fails in a minute, not ten
    program_import_timeout_s: float = Field(60.0, gt=0)
    candidate_timeout_s: float = Field(1800.0, gt=0)
    candidate_memory_mb: float = Field(0.0, ge=0)  # address-space limit per candidate child; 0: 75 % of RAM
    # a candidate this many times slower than the baseline on its first inputs is stopped there, its accuracy
    # unmeasured (untuned TVM runs ~30x slower); 0: never
    hopeless_slowdown: float = Field(10.0, ge=0)

    # TVM tuning: how long one trial may take to build and to run before it counts as failed (LocalBuilder's
    # own 30 s lost 21 of 44 trials of a real transformer on a loaded 2-core machine)
    tune_builder_timeout_s: float = Field(120.0, gt=0)
    tune_runner_timeout_s: float = Field(60.0, gt=0)
    # kiln's int8 kernels: "auto" (the detected CPU's widest intrinsic of the candidate's int8_sums: exact vnni,
    # avx512-exact, avx2-exact; saturating avx512, avx2) or one of kiln.compiler.int8.intrinsics.INTRINSICS for
    # every int8 candidate
    int8_intrinsic: str = "auto"
    tvm_prepack: bool = True  # CPU: weights packed at compile time in the layout the tuned kernels read
    # the int8 instruction set of the CPUs that will serve (kiln.cpu.Int8Isa): auto is this one; "avx2" makes
    # int8 that stays exact on CPUs without VNNI when optimizing on one with it
    int8_isa: Literal["auto", "amx", "avx512-vnni", "avx-vnni", "avx512", "avx2", "sse"] = "auto"

    # object storage (MinIO/S3); a Prefect kiln-s3 block named by s3_block takes precedence in flows
    s3_endpoint: str = ""
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str | None = None
    s3_secure: bool = True
    s3_part_mb: int = Field(16, ge=5, description="S3's smallest part is 5 MiB")
    s3_block: str | None = None

    # compiling and shipping
    cuda_arch: str = "sm_90a"
    base_image: str = "ubuntu:24.04"
    docker_host: str = Field("unix:///var/run/docker.sock", validation_alias="DOCKER_HOST")

    # serving (the runtime image's entry point)
    port: int = Field(8001, ge=0, le=65535)
    http_port: int = Field(8000, ge=-1, le=65535)  # REST v2 and /metrics; -1: none (Triton's pair: 8000/8001)
    workers: int = Field(1, ge=1)

    # service mode (`kiln up`) and the web app
    host: str = "127.0.0.1"
    prefect_port: int = Field(4200, ge=1, le=65535)
    web_port: int = Field(8000, ge=1, le=65535)
    worker_limit: int = Field(1, ge=1)
    web_token: str = ""
    prefect_ui_url: str | None = None
    optimize_deployment: str = "optimize/optimize"
    web_max_upload_mb: float = Field(256.0, gt=0)
    trackers: str = ""  # TVM RPC trackers (HOST:PORT, comma-separated) whose devices the web service lists
    mlflow_webhook_secret: str | None = None
    # MLflow: where models:/, runs:/ and mlflow-artifacts:/ sources are fetched and versions tagged, and how kiln
    # signs in there; MLflow's own variable names are read too, as its clients do
    mlflow_tracking_uri: str | None = Field(None, validation_alias=AliasChoices("KILN_MLFLOW_TRACKING_URI",
                                                                                "MLFLOW_TRACKING_URI"))
    mlflow_tracking_token: str | None = Field(None, validation_alias=AliasChoices("KILN_MLFLOW_TRACKING_TOKEN",
                                                                                  "MLFLOW_TRACKING_TOKEN"))
    mlflow_tracking_username: str | None = Field(None, validation_alias=AliasChoices("KILN_MLFLOW_TRACKING_USERNAME",
                                                                                     "MLFLOW_TRACKING_USERNAME"))
    mlflow_tracking_password: str | None = Field(None, validation_alias=AliasChoices("KILN_MLFLOW_TRACKING_PASSWORD",
                                                                                     "MLFLOW_TRACKING_PASSWORD"))
    hf_webhook_secret: str | None = None
    hf_source_template: str | None = None  # e.g. s3://models/hf/{repo}/{revision}.zip
    webhook_window_s: int = Field(300, ge=1)
    webhook_parameters: dict[str, Any] = Field(default_factory=dict)

    # Prefect's own
    prefect_api_url: str | None = Field(None, validation_alias="PREFECT_API_URL")
    prefect_home: Path | None = Field(None, validation_alias="PREFECT_HOME")

    @field_validator("s3_region", "s3_access_key", "s3_secret_key", "s3_block", "prefect_ui_url",
                     "mlflow_webhook_secret", "mlflow_tracking_uri", "mlflow_tracking_token",
                     "mlflow_tracking_username", "mlflow_tracking_password", "hf_webhook_secret", "hf_source_template",
                     "prefect_api_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_parameters")
    @classmethod
    def _optimize_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        if {"program", "name", "report_to"} & set(value):
            raise ValueError("must be a JSON object of optimize parameters other than program, name and report_to, "
                             'e.g. {"trials": 128, "upload": "s3://models/registry"}')
        return value

    @property
    def tracker_list(self) -> list[str]:
        return [t.strip() for t in self.trackers.split(",") if t.strip()]

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def store_dir(self) -> Path:
        return (self.store or self.home_dir / "store").expanduser()

    @property
    def candidate_memory_limit_mb(self) -> float:
        if self.candidate_memory_mb:
            return self.candidate_memory_mb
        return 0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 20)

    @property
    def max_archive_bytes(self) -> int:
        return int(self.max_archive_mb * (1 << 20))


_ENV_NAMES = {"docker_host": "DOCKER_HOST", "prefect_api_url": "PREFECT_API_URL", "prefect_home": "PREFECT_HOME"}


def env_name(field: str) -> str:
    """The variable that sets `field`."""
    return _ENV_NAMES.get(field, f"KILN_{field.upper()}")


def settings() -> Settings:
    """The settings as the environment says now; ConfigError names the first variable that does not parse."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else "?"
        value = first.get("input")
        shown = f", not {value!r}" if isinstance(value, str | int | float) else ""
        raise ConfigError(f"{env_name(field)}: {first['msg']}{shown}",
                          hint=f"fix or unset {env_name(field)} (in the environment or .env)") from None
    except SettingsError as exc:  # a value that should be JSON and is not
        field = next((f for f in Settings.model_fields if f'"{f}"' in str(exc)), "?")
        raise ConfigError(f"{env_name(field)} is not valid JSON", hint=f"fix or unset {env_name(field)}") from None


def environment() -> dict[str, str]:
    """The whole environment, for a child process kiln starts (it reads its own settings there)."""
    return dict(os.environ)


@contextlib.contextmanager
def environ_set(name: str, value: str, keep: bool = False) -> Iterator[None]:
    """`name` set to `value` inside the block and restored after it (left as it is where `keep` and already set);
    for the few variables other libraries read once, at import or when their thread pool starts."""
    before = os.environ.get(name)
    if keep and before is not None:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def environ_default(name: str, value: str) -> None:
    """Set `name` for this process and its children unless it is set already."""
    os.environ.setdefault(name, value)


def kiln_home() -> Path:
    return settings().home_dir
