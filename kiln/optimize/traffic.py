"""Speed over the traffic: which evaluation inputs are timed, and the shape buckets latencies are reported in.

With samples at their own shapes, one input is not the traffic: a candidate is timed over inputs drawn from
the evaluation split stratified by size (each stands for an equal share of the samples, so the plain mean of
their latencies is the traffic-weighted mean), and its latency is also reported per shape bucket (powers of two
of the dynamic dimensions), so a candidate that wins on average but loses on the common short inputs is seen.
A static program has one shape: its first input is timed, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, Field

from kiln.artifact.manifest import LatencyMs
from kiln.artifact.specs import Profile
from kiln.runtime.latency import Rounds, through_inputs

Feed = dict[str, np.ndarray]
TIMED_INPUTS = 16  # inputs each timed call runs through when shapes vary (stratified by size)
BUCKET_SHARE = 0.10  # a bucket holding this share of the traffic must not be slower than the baseline
BUCKET_TOLERANCE = 0.05  # ... by more than this fraction (per-bucket medians are noisier than the whole)


class Traffic(BaseModel):
    """What the latencies mean: `timed` of `feeds` evaluation inputs (their indices), and each shape bucket's
    share of the evaluation split."""

    feeds: int
    timed: list[int]
    labels: list[str] = Field(default_factory=list)  # the bucket of each timed input
    shares: dict[str, float] = Field(default_factory=dict)  # bucket -> share of the evaluation feeds

    def describe(self) -> str:
        if not self.shares:
            return f"{len(self.timed)} input(s) of one shape"
        return (f"{len(self.timed)} of {self.feeds} inputs, stratified by size; buckets " +
                ", ".join(f"{b} {s:.0%}" for b, s in self.shares.items()))


def _bucket(value: int) -> str:
    if value <= 1:
        return "1"
    high = 1 << int(np.ceil(np.log2(value)))
    return f"{high // 2 + 1}-{high}"


def bucket_of(feed: Feed, profile: Profile) -> str:
    """`sequence_length 17-32, batch_size 1`: each varying dimension's power-of-two bucket."""
    parts = []
    for dim in profile.varying:
        value = dim.value(feed)
        if value is not None:
            parts.append(f"{dim.name} {_bucket(value)}")
    return ", ".join(parts)


def plan_timing(fds: list[Feed], profile: Profile, wanted: int = TIMED_INPUTS) -> Traffic:
    """The inputs to time: the first, when every feed has one shape; else `wanted` spread over the feeds sorted
    by size (evenly spaced quantiles: each stands for the same share of the samples)."""
    sizes = [sum(int(np.size(a)) for a in f.values()) for f in fds]
    shapes = {tuple(np.shape(a) for a in f.values()) for f in fds}
    if len(shapes) <= 1 or not profile:
        return Traffic(feeds=len(fds), timed=[0] if fds else [])
    order = np.argsort(sizes, kind="stable")
    picks = order if len(fds) <= wanted else order[np.linspace(0, len(fds) - 1, wanted).round().astype(int)]
    labels_all = [bucket_of(f, profile) for f in fds]
    shares: dict[str, float] = {}
    for label in sorted(set(labels_all), key=bucket_order):
        shares[label] = labels_all.count(label) / len(fds)
    timed = [int(i) for i in picks]
    return Traffic(feeds=len(fds), timed=timed, labels=[labels_all[i] for i in timed], shares=shares)


def bucket_order(label: str) -> list[int]:
    """Buckets sort by their numbers: `sequence 9-16` before `sequence 17-32`."""
    return [int(x) for x in re.findall(r"\d+", label)]


def per_bucket(times: list[list[float]], traffic: Traffic) -> dict[str, float]:
    """p50 milliseconds per bucket from each timed input's calls (`times[i]`: every call of input i)."""
    if not traffic.labels:
        return {}
    out: dict[str, list[float]] = {}
    for label, calls in zip(traffic.labels, times, strict=True):
        out.setdefault(label, []).extend(calls)
    return {label: float(np.median(v)) for label, v in sorted(out.items(), key=lambda kv: bucket_order(kv[0])) if v}


def slower_buckets(candidate: dict[str, float], baseline: dict[str, float], traffic: Traffic) -> list[str]:
    """Buckets holding >= BUCKET_SHARE of the traffic where the candidate is slower than the baseline by more
    than BUCKET_TOLERANCE, described."""
    out = []
    for label, share in traffic.shares.items():
        mine, theirs = candidate.get(label), baseline.get(label)
        if share >= BUCKET_SHARE and mine and theirs and mine > theirs * (1 + BUCKET_TOLERANCE):
            out.append(f"{label} ({share:.0%} of the traffic): p50 {mine:.3g} ms vs {theirs:.3g} ms")
    return out


def time_over(runs: dict[str, Callable[[Feed], object]], inputs: list[Feed], traffic: Traffic | None,
              repeats: int, seconds: float) -> dict[str, LatencyMs]:
    """Each callable timed in interleaved rounds, every call running through `inputs` one after another:
    milliseconds per input (the traffic's mean), and with `traffic`, the p50 of each shape bucket."""
    timed, per_input = through_inputs(runs, inputs, repeats=repeats, max_seconds=seconds)
    return latencies(timed, per_input, len(inputs), traffic)


def latencies(timed: dict[str, Rounds], per_input: dict[str, list[list[float]]], count: int,
              traffic: Traffic | None) -> dict[str, LatencyMs]:
    """Rounds of passes through `count` inputs (kiln.runtime.latency.through_inputs, here or on a device) as
    milliseconds per input, and with `traffic`, the p50 of each shape bucket."""
    out = {}
    for name, rounds in timed.items():
        summary = {k: ([x / count for x in v] if isinstance(v, list) else v / count if k != "runs" else v)
                   for k, v in rounds.summary().items()}
        buckets = per_bucket(per_input[name], traffic) if traffic is not None else {}
        out[name] = LatencyMs(**summary, buckets=buckets)
    return out
