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


class Rounds(BaseModel):
    """One callable's times from interleaved rounds: every call, and which round it fell in."""

    times: list[list[float]]  # milliseconds, one list per round

    def summary(self) -> dict[str, float | int | list[float]]:
        flat = np.concatenate([np.asarray(r) for r in self.times])
        return {"p10": float(np.percentile(flat, 10)), "p50": float(np.median(flat)),
                "p90": float(np.percentile(flat, 90)), "runs": int(flat.size),
                "rounds": [float(np.median(r)) for r in self.times]}


def interleaved(calls: dict[str, Callable[[], object]], *, repeats: int = 200, max_seconds: float = 5.0,
                rounds: int = 10, warmup: int = 5) -> dict[str, Rounds]:
    """Time several callables in alternating rounds (A, B, C, A, B, C, ...), so a load change on a shared machine
    hits all of them alike and their per-round medians can be compared pairwise.

    Each callable gets about `repeats` timed calls, or `max_seconds` of calls (whichever is fewer), spread over
    `rounds` rounds. Before each callable's share of a round one untimed call lets the previous callable's
    spinning threads (onnxruntime's) go idle, unless a call takes long enough for that not to matter."""
    per_call: dict[str, float] = {}
    for name, call in calls.items():
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            call()
            per_call[name] = time.perf_counter() - t0
    budget = {n: max(1, min(repeats, int(max_seconds / max(t, 1e-9)))) for n, t in per_call.items()}
    n_rounds = max(1, min(rounds, max(budget.values())))
    per_round = {n: max(1, b // n_rounds) for n, b in budget.items()}
    times: dict[str, list[list[float]]] = {n: [] for n in calls}
    for _ in range(n_rounds):
        for name, call in calls.items():
            if per_call[name] < 0.05:
                call()
            got = []
            for _ in range(per_round[name]):
                t0 = time.perf_counter_ns()
                call()
                got.append((time.perf_counter_ns() - t0) / 1e6)
            times[name].append(got)
    return {n: Rounds(times=t) for n, t in times.items()}


def through_inputs(runs: dict[str, Callable[[dict], object]], inputs: list[dict], *, repeats: int = 200,
                   max_seconds: float = 5.0) -> tuple[dict[str, Rounds], dict[str, list[list[float]]]]:
    """Each callable timed in interleaved rounds, every timed call running through `inputs` one after another:
    the rounds (milliseconds per pass through all inputs) and each input's own times (for per-bucket figures).
    The optimizer's selection and confirmation rounds and a device's (kiln.device) are this one protocol."""
    per_input: dict[str, list[list[float]]] = {name: [[] for _ in inputs] for name in runs}

    def through(name: str, run: Callable[[dict], object]) -> Callable[[], None]:
        record = per_input[name]

        def call() -> None:
            for i, feed in enumerate(inputs):
                t0 = time.perf_counter_ns()
                run(feed)
                record[i].append((time.perf_counter_ns() - t0) / 1e6)
        return call

    timed = interleaved({n: through(n, r) for n, r in runs.items()}, repeats=repeats, max_seconds=max_seconds)
    return timed, per_input
