"""Retry a call to an outside service only while its failure is transient, with exponential backoff."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kiln.errors import ServiceError

T = TypeVar("T")


def with_retries(fn: Callable[[], T], explain: Callable[[Exception], ServiceError], *, attempts: int = 4,
                 delay: float = 0.5, on_retry: Callable[[str], None] | None = None) -> T:
    """Call fn; a failure is turned into a ServiceError by `explain` (or is one already) and retried while
    `transient`; the last one is raised with the number of attempts in its message."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # the SDKs raise many types; `explain` sorts them
            err = exc if isinstance(exc, ServiceError) else explain(exc)
            if not err.transient or attempt == attempts:
                if err.transient and attempts > 1:
                    err.message += f" (after {attempt} attempts)"
                    err.args = (err.render(),)
                raise err from None
            if on_retry:
                on_retry(f"{err.message}; retry {attempt}/{attempts - 1} in {delay:.1f} s")
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
