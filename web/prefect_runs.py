"""Flow runs through the Prefect client: create `optimize` runs (exactly once per idempotency key), read them.

Every call first checks that the Prefect API answers within a second or two, so the web answers 503 at once
instead of waiting out the client's retries when the server is down; a server that stays busy is 503 too.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx


class PrefectUnavailable(Exception):
    """The Prefect API did not answer, or stayed busy; nothing was created."""


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

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[Any]:
        """A Prefect client, after a quick health check; a Prefect that is down, stops answering, or stays busy
        past the client's own retries (503 is how Prefect on SQLite says "lost a lock race, retry"; nothing was
        written) becomes PrefectUnavailable, so every page and webhook answers 503 and the caller can retry."""
        from prefect.client.orchestration import PrefectClient

        if not await self.healthy():
            raise PrefectUnavailable(f"the Prefect server at {self.api} does not answer")
        try:
            async with PrefectClient(self.api, httpx_settings={"timeout": 10}) as client:
                yield client
        except (httpx.ConnectError, httpx.TimeoutException) as exc:
            raise PrefectUnavailable(f"the Prefect server at {self.api} stopped answering ({exc})") from None
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code < 500:
                raise
            raise PrefectUnavailable(f"the Prefect server at {self.api} is busy (it answered "
                                     f"{exc.response.status_code}, also on the client's retries)") from None

    async def create(self, parameters: dict[str, Any], *, idempotency_key: str | None = None,
                     tags: list[str] | None = None, name: str | None = None):
        """A flow run of the optimize deployment; with an idempotency key, the existing run for that key."""
        async with self._client() as client:
            deployment = await client.read_deployment_by_name(self.deployment)
            return await client.create_flow_run_from_deployment(
                deployment.id, parameters=parameters, idempotency_key=idempotency_key, tags=tags or [], name=name)

    async def read(self, flow_run_id: str):
        async with self._client() as client:
            return await client.read_flow_run(flow_run_id)

    async def recent(self, limit: int = 15) -> list:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
        from prefect.client.schemas.sorting import FlowRunSort

        async with self._client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[self.deployment.split("/")[-1]])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit)
