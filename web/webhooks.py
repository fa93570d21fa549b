"""Model-registry webhooks: verify, parse, and say what to optimize (or that the event is not for kiln).

MLflow signs "{delivery_id}.{timestamp}.{body}" with HMAC-SHA256 (header `X-MLflow-Signature: v1,<base64>`,
`X-MLflow-Delivery-Id`, `X-MLflow-Timestamp` in Unix seconds); a delivery outside the time window is refused,
so a captured one cannot be replayed later. Hugging Face sends the shared secret in `X-Webhook-Secret`.
Each (registry, model, version) becomes one idempotency key: a registry's retries start nothing new.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from kiln.program.sources import MLFLOW_SCHEMES  # fetched by the flow run, through KILN_MLFLOW_TRACKING_URI


class Rejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Trigger:
    registry: str
    model: str
    version: str
    source: str
    event: str

    @property
    def key(self) -> str:
        return f"{self.registry}:{self.model}:{self.version}"

    @property
    def report_to(self) -> dict[str, str] | None:
        """The version the run's outcome is tagged on (MLflow's registry takes tags; Hugging Face's is git)."""
        if self.registry != "mlflow":
            return None
        return {"registry": "mlflow", "name": self.model, "version": self.version}


SOURCE_SCHEMES = ("s3://", "file://", "/")


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "the body must be a JSON object")
    return payload


def _check_source(source: Any, registry: str, also: tuple[str, ...] = ()) -> str:
    if not isinstance(source, str) or not source.startswith(SOURCE_SCHEMES + also):
        raise Rejected(422, f"{registry}: the model version's source {source!r} is not "
                            + ("an MLflow model URI (models:/, runs:/, mlflow-artifacts:/), " if also else "")
                            + "a local path, file:// or s3:// URI of a program folder, archive or .onnx file")
    return source


def mlflow(headers: dict[str, str], body: bytes, secret: str | None, window_s: int,
           now: float | None = None) -> Trigger | None:
    if not secret:
        raise Rejected(503, "KILN_MLFLOW_WEBHOOK_SECRET is not set on the kiln web service")
    signature = headers.get("x-mlflow-signature")
    delivery = headers.get("x-mlflow-delivery-id")
    stamp = headers.get("x-mlflow-timestamp")
    if not (signature and delivery and stamp):
        raise Rejected(401, "unsigned: X-MLflow-Signature, X-MLflow-Delivery-Id and X-MLflow-Timestamp are required")
    try:
        sent = int(stamp)
    except ValueError:
        raise Rejected(401, f"X-MLflow-Timestamp {stamp!r} is not Unix seconds") from None
    version, _, given = signature.partition(",")
    expected = base64.b64encode(hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body,
                                         hashlib.sha256).digest()).decode()
    if version != "v1" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Rejected(403, "the signature does not match (X-MLflow-Signature)")
    if abs((now or time.time()) - sent) > window_s:
        raise Rejected(403, f"stale delivery: its timestamp is more than {window_s} s from now")
    payload = _json(body)
    event = f"{payload.get('entity')}.{payload.get('action')}"
    if event != "model_version.created":
        return None
    data = payload.get("data") if isinstance(payload.get("data"), dict) else payload
    name, ver = data.get("name"), data.get("version")
    if not isinstance(name, str) or not name or ver in (None, ""):
        raise Rejected(400, "model_version.created needs data.name and data.version")
    return Trigger("mlflow", name, str(ver), _check_source(data.get("source"), "mlflow", MLFLOW_SCHEMES), event)


def huggingface(headers: dict[str, str], body: bytes, secret: str | None,
                source_template: str | None) -> Trigger | None:
    if not secret:
        raise Rejected(503, "KILN_HF_WEBHOOK_SECRET is not set on the kiln web service")
    given = headers.get("x-webhook-secret")
    if not given:
        raise Rejected(401, "unsigned: X-Webhook-Secret is required")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise Rejected(403, "X-Webhook-Secret does not match")
    payload = _json(body)
    event = payload.get("event") or {}
    repo = payload.get("repo") or {}
    name = f"{event.get('scope')}.{event.get('action')}"
    if repo.get("type") != "model" or event.get("scope") != "repo.content" or event.get("action") not in (
            "create", "update"):
        return None
    repo_name = repo.get("name")
    revision = repo.get("headSha") or next((r.get("newSha") for r in payload.get("updatedRefs") or []
                                            if isinstance(r, dict) and r.get("newSha")), None)
    if not isinstance(repo_name, str) or not repo_name or not revision:
        raise Rejected(400, "a repo.content event needs repo.name and repo.headSha")
    if not source_template:
        raise Rejected(503, "KILN_HF_SOURCE_TEMPLATE is not set: kiln cannot tell where this repo's program is "
                            "(e.g. s3://models/hf/{repo}/{revision}.zip)")
    source = source_template.format(repo=repo_name, name=repo_name.rsplit("/", 1)[-1], revision=revision)
    return Trigger("huggingface", repo_name, str(revision), _check_source(source, "huggingface"), name)
