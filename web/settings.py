"""The web service's settings, from the environment (what `kiln up` sets)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel


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

    @classmethod
    def from_env(cls) -> WebSettings:
        from kiln.loader import kiln_home
        from kiln.store import default_store

        token = os.environ.get("KILN_WEB_TOKEN", "")
        if len(token) < 16:
            raise SystemExit("KILN_WEB_TOKEN must be set to a secret of at least 16 characters "
                             "(`kiln up` makes one and prints it)")
        api = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api").rstrip("/")
        return cls(
            token=token, prefect_api=api,
            prefect_ui=os.environ.get("KILN_PREFECT_UI_URL", api.removesuffix("/api")),
            deployment=os.environ.get("KILN_OPTIMIZE_DEPLOYMENT", "optimize/optimize"),
            uploads=kiln_home() / "uploads", store=default_store(),
            max_upload_mb=float(os.environ.get("KILN_WEB_MAX_UPLOAD_MB", "256")),
            mlflow_secret=os.environ.get("KILN_MLFLOW_WEBHOOK_SECRET") or None,
            hf_secret=os.environ.get("KILN_HF_WEBHOOK_SECRET") or None,
            hf_source_template=os.environ.get("KILN_HF_SOURCE_TEMPLATE") or None,
            webhook_window_s=int(os.environ.get("KILN_WEBHOOK_WINDOW_S", "300")),
            webhook_parameters=_json_object("KILN_WEBHOOK_PARAMETERS"))


def _json_object(var: str) -> dict:
    import json

    raw = os.environ.get(var, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SystemExit(f"{var} is not JSON: {exc}") from None
    if not isinstance(value, dict) or {"program", "name"} & set(value):
        raise SystemExit(f"{var} must be a JSON object of optimize parameters other than program and name, "
                         'e.g. {"trials": 128, "upload": "s3://models/registry"}')
    return value
