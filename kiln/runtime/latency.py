"""Latency measurement: median and p90 of single calls after a warm-up, bounded in count and time."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel


class Latency(BaseModel):
    p50: float  # milliseconds
    p90: float
    mean: float
    runs: int


def measure(call: Callable[[], object], *, warmup: int = 10, repeats: int = 200, max_seconds: float = 5.0,
            min_repeats: int = 10) -> Latency:
    """Time `call` individually; stops at `repeats` runs or after `max_seconds` (at least `min_repeats`)."""
    start = time.perf_counter()
    for _ in range(warmup):
        call()
        if time.perf_counter() - start > max_seconds / 2:
            break
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < repeats and (len(times) < min_repeats or time.perf_counter() < deadline):
        t0 = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    arr = np.asarray(times)
    return Latency(p50=float(np.median(arr)), p90=float(np.percentile(arr, 90)), mean=float(arr.mean()),
                   runs=len(arr))
