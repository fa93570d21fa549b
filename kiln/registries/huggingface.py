"""Hugging Face Hub: its repo webhooks start an optimization of the new revision.

Hugging Face sends the shared secret in `X-Webhook-Secret`. The Hub holds a model repo, not a kiln program, so
KILN_HF_SOURCE_TEMPLATE says where each revision's program is (e.g. s3://models/hf/{repo}/{revision}.zip). Its
versions are git revisions, which take no tags: a run's outcome is in Prefect and the store only.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from kiln.registries.base import Registry, Rejected, Trigger, json_object

if TYPE_CHECKING:
    from kiln.config import Settings


class HuggingFace(Registry):
    name = "huggingface"

    def delivery(self, headers: dict[str, str], body: bytes, cfg: Settings, now: float | None = None
                 ) -> Trigger | None:
        secret = cfg.hf_webhook_secret
        if not secret:
            raise Rejected(503, "KILN_HF_WEBHOOK_SECRET is not set on the kiln web service")
        given = headers.get("x-webhook-secret")
        if not given:
            raise Rejected(401, "unsigned: X-Webhook-Secret is required")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise Rejected(403, "X-Webhook-Secret does not match")
        payload = json_object(body)
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
        if not cfg.hf_source_template:
            raise Rejected(503, "KILN_HF_SOURCE_TEMPLATE is not set: kiln cannot tell where this repo's program "
                                "is (e.g. s3://models/hf/{repo}/{revision}.zip)")
        source = cfg.hf_source_template.format(repo=repo_name, name=repo_name.rsplit("/", 1)[-1], revision=revision)
        return Trigger(self.name, repo_name, str(revision), source, name)
