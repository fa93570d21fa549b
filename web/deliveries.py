"""Webhook deliveries answered from what the web process already knows.

A registry retries a delivery, sometimes many times at once: each duplicate used to cost a Prefect call (and
50 concurrent ones timed out after 30 s on a loaded 2-core machine). Here the first delivery of a key creates
the flow run (Prefect's idempotency key still guards across restarts and replicas); concurrent duplicates wait
for it on the key's lock and later ones are answered from memory, with no Prefect call.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable


class Deliveries:
    def __init__(self, remember: int = 4096):
        self._runs: OrderedDict[str, str] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._remember = remember

    def known(self, key: str) -> str | None:
        return self._runs.get(key)

    async def run_for(self, key: str, create: Callable[[], Awaitable[str]]) -> tuple[str, bool]:
        """(the flow run's id for `key`, whether this call created it): `create` runs once per key at a time,
        and not again once it succeeded."""
        if (known := self._runs.get(key)) is not None:
            return known, False
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (known := self._runs.get(key)) is not None:
                return known, False
            flow_run_id = await create()
            self._runs[key] = flow_run_id
            while len(self._runs) > self._remember:
                self._runs.popitem(last=False)
        self._locks.pop(key, None)
        return flow_run_id, True
