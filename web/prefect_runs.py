"""Flow runs through the Prefect client: create `optimize` runs (exactly once per idempotency key), read them.

Every call first checks that the Prefect API answers within a second or two, so the web answers 503 at once
instead of waiting out the client's retries when the server is down.
"""

from __future__ import annotations

from typing import Any

import httpx


class PrefectUnavailable(Exception):
    """The Prefect API did not answer; nothing was created."""


class Runs:
    def __init__(self, api: str, ui: str, deployment: str):
        self.api, self.ui, self.deployment = api.rstrip("/"), ui.rstrip("/"), deployment

    def ui_link(self, flow_run_id: str) -> str:
        return f"{self.ui}/runs/flow-run/{flow_run_id}"

    async def healthy(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{self.api}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    def _client(self):
        from prefect.client.orchestration import PrefectClient

        return PrefectClient(self.api, httpx_settings={"timeout": 10})

    async def _ready(self) -> None:
        if not await self.healthy():
            raise PrefectUnavailable(f"the Prefect server at {self.api} does not answer")

    async def create(self, parameters: dict[str, Any], *, idempotency_key: str | None = None,
                     tags: list[str] | None = None, name: str | None = None):
        """A flow run of the optimize deployment; with an idempotency key, the existing run for that key."""
        await self._ready()
        try:
            async with self._client() as client:
                deployment = await client.read_deployment_by_name(self.deployment)
                return await client.create_flow_run_from_deployment(
                    deployment.id, parameters=parameters, idempotency_key=idempotency_key, tags=tags or [],
                    name=name)
        except (httpx.ConnectError, httpx.TimeoutException) as exc:
            raise PrefectUnavailable(f"the Prefect server at {self.api} stopped answering ({exc})") from None
        except httpx.HTTPStatusError as exc:
            # 503 is how Prefect says "retry": on SQLite, a write that lost a lock race; nothing was created.
            # The client already retried it; past that, the caller gets 503 too, and its retry is safe.
            if exc.response.status_code < 500:
                raise
            raise PrefectUnavailable(f"the Prefect server at {self.api} is busy (it answered "
                                     f"{exc.response.status_code}, also on the client's retries)") from None

    async def read(self, flow_run_id: str):
        await self._ready()
        async with self._client() as client:
            return await client.read_flow_run(flow_run_id)

    async def recent(self, limit: int = 15) -> list:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
        from prefect.client.schemas.sorting import FlowRunSort

        await self._ready()
        async with self._client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[self.deployment.split("/")[-1]])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit)
