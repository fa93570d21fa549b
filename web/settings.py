"""The web service's settings: the part of kiln's Settings it uses (what `kiln up` sets)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, field_validator

from kiln.config import ConfigError, Settings, settings


class WebSettings(BaseModel):
    token: str
    prefect_api: str = "http://127.0.0.1:4200/api"
    prefect_ui: str = "http://127.0.0.1:4200"
    deployment: str = "optimize/optimize"
    uploads: Path
    store: Path
    max_upload_mb: float = 256.0
    mlflow_secret: str | None = None
    hf_secret: str | None = None
    hf_source_template: str | None = None  # e.g. s3://models/hf/{repo}/{revision}.zip
    webhook_window_s: int = 300
    webhook_parameters: dict = {}  # optimize parameters for webhook-started runs (e.g. upload, image, trials)

    @field_validator("token")
    @classmethod
    def _secret_enough(cls, value: str) -> str:
        if len(value) < 16:
            raise ConfigError("KILN_WEB_TOKEN must be set to a secret of at least 16 characters",
                              hint="`kiln up` makes one and prints it")
        return value

    @field_validator("webhook_parameters")
    @classmethod
    def _optimize_fields(cls, value: dict) -> dict:
        """Webhook runs would all fail on a typo here: check it once, at start-up."""
        from kiln.optimize.request import OptimizeRequest

        try:
            OptimizeRequest.of(program="-", **value)
        except Exception as exc:
            raise ConfigError(f"KILN_WEBHOOK_PARAMETERS: {getattr(exc, 'message', exc)}",
                              hint=getattr(exc, "hint", None)) from None
        return value

    @classmethod
    def of(cls, cfg: Settings | None = None, token: str | None = None) -> WebSettings:
        cfg = cfg or settings()
        api = (cfg.prefect_api_url or "http://127.0.0.1:4200/api").rstrip("/")
        return cls(token=cfg.web_token if token is None else token, prefect_api=api,
                   prefect_ui=cfg.prefect_ui_url or api.removesuffix("/api"), deployment=cfg.optimize_deployment,
                   uploads=cfg.home_dir / "uploads", store=cfg.store_dir, max_upload_mb=cfg.web_max_upload_mb,
                   mlflow_secret=cfg.mlflow_webhook_secret, hf_secret=cfg.hf_webhook_secret,
                   hf_source_template=cfg.hf_source_template, webhook_window_s=cfg.webhook_window_s,
                   webhook_parameters=cfg.webhook_parameters)
