"""The web service's settings: kiln's Settings (what `kiln up` sets), and what the web derives from them."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, field_validator

from kiln.config import ConfigError, Settings, settings


class WebSettings(BaseModel):
    kiln: Settings  # secrets, webhook window and parameters, upload limit: read there, by the registries too
    token: str
    prefect_api: str
    prefect_ui: str

    @field_validator("token")
    @classmethod
    def _secret_enough(cls, value: str) -> str:
        if len(value) < 16:
            raise ConfigError("KILN_WEB_TOKEN must be set to a secret of at least 16 characters",
                              hint="`kiln up` makes one and prints it")
        return value

    @field_validator("kiln")
    @classmethod
    def _webhook_parameters(cls, value: Settings) -> Settings:
        """Webhook runs would all fail on a typo in KILN_WEBHOOK_PARAMETERS: check it once, at start-up."""
        from kiln.optimize.request import OptimizeRequest

        try:
            OptimizeRequest.of(program="-", **value.webhook_parameters)
        except Exception as exc:
            raise ConfigError(f"KILN_WEBHOOK_PARAMETERS: {getattr(exc, 'message', exc)}",
                              hint=getattr(exc, "hint", None)) from None
        return value

    @property
    def deployment(self) -> str:
        return self.kiln.optimize_deployment

    @property
    def uploads(self) -> Path:
        return self.kiln.home_dir / "uploads"

    @property
    def store(self) -> Path:
        return self.kiln.store_dir

    @property
    def max_upload_mb(self) -> float:
        return self.kiln.web_max_upload_mb

    @classmethod
    def of(cls, cfg: Settings | None = None, token: str | None = None) -> WebSettings:
        cfg = cfg or settings()
        api = (cfg.prefect_api_url or f"http://{cfg.host}:{cfg.prefect_port}/api").rstrip("/")
        return cls(kiln=cfg, token=cfg.web_token if token is None else token, prefect_api=api,
                   prefect_ui=cfg.prefect_ui_url or api.removesuffix("/api"))
