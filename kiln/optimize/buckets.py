"""Shape buckets for TVM, whose builds are static: a few values of the one varying dimension, chosen from the
data's histogram, each compiled (and tuned, largest traffic share first, within the one budget) at its value;
kiln.runtime.buckets pads each request up to the smallest bucket that holds it.

The largest bucket is the profile's upper end, so every shape in the profile is served. The others are powers of
two, added one at a time where they save the most padded work over the samples (the work of a call taken as
proportional to the bucket's length), so short common lengths get a build of their own.

Where two dimensions vary (a text detector's height and width), the buckets are a small grid chosen from the
joint histogram the same way: the corner (both upper ends) always, then pairs of each dimension's own bucket
values, added where they save the most padded work (the product of the pair) over the samples.

Under a time budget, only as many buckets are built as the time can give each a first round of tuning.
"""

from __future__ import annotations

import itertools

import numpy as np
from pydantic import BaseModel

from kiln.artifact.specs import Dim, Profile

MAX_BUCKETS = 3
MAX_GRID = 4  # builds of a two-dimension grid (each is tuned: more would thin every one's share of the budget)
MAX_DIMS = 2
SMALLEST = 8


class Bucket(BaseModel):
    values: list[int]  # one per bucketed dimension
    share: float  # of the samples this bucket serves

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(self.values)

    @property
    def value(self) -> int:
        """The value of a one-dimension bucket."""
        return self.values[0]

    def describe(self) -> str:
        return "x".join(map(str, self.values))


def bucketed_dims(profile: Profile) -> tuple[list[Dim], str | None]:
    """(the dimensions buckets vary, None) or ([], why TVM cannot bucket this profile)."""
    varying = profile.varying
    batch = next((d for d in varying if d.batch), None)
    if batch is not None:
        return [], (f"TVM's per-bucket builds vary a length, not the batch ({batch.describe()}); serve batches "
                    "with onnxruntime, or fix the batch with --dim")
    if not varying or len(varying) > MAX_DIMS:
        return [], (f"TVM's per-bucket builds vary one or two dimensions, and this profile varies {len(varying)} "
                    f"({profile.describe()}); fix the others with --dim NAME=N or --shape")
    return varying, None


def choose(dim: Dim, values: list[int], most: int = MAX_BUCKETS) -> list[Bucket]:
    """Up to `most` bucket values for `dim` (ascending), with the share of `values` each serves."""
    values = [min(max(v, dim.low), dim.high) for v in values] or [dim.high]
    chosen = {dim.high}
    options = [p for p in (1 << k for k in range(3, 31)) if SMALLEST <= p < dim.high and p >= dim.low]

    def padded(buckets: set[int]) -> int:
        return sum(min(b for b in buckets if b >= v) for v in values)

    while len(chosen) < most:
        best = min(options, key=lambda p: padded(chosen | {p}), default=None)
        if best is None or padded(chosen | {best}) >= padded(chosen):
            break
        chosen.add(best)
        options.remove(best)
    ordered = sorted(chosen)
    served = {b: 0 for b in ordered}
    for v in values:
        served[next(b for b in ordered if b >= v)] += 1
    return [Bucket(values=[b], share=served[b] / len(values)) for b in ordered]


def _holder(buckets: list[tuple[int, ...]], point: tuple[int, ...]) -> tuple[int, ...]:
    """The bucket of least work (the product of its values) that holds `point`: the runtime's rule."""
    return min((b for b in buckets if all(p <= v for p, v in zip(point, b, strict=True))),
               key=lambda b: (int(np.prod(b)), b))


def choose_grid(dims: list[Dim], points: list[tuple[int, ...]], most: int = MAX_GRID) -> list[Bucket]:
    """Up to `most` buckets over `dims` (one dimension: choose()) for the samples' joint values `points`."""
    if len(dims) == 1:
        return choose(dims[0], [p[0] for p in points], min(most, MAX_BUCKETS))
    points = [tuple(min(max(v, d.low), d.high) for v, d in zip(p, dims, strict=True)) for p in points] or \
        [tuple(d.high for d in dims)]
    corner = tuple(d.high for d in dims)
    per_dim = [[b.value for b in choose(d, [p[i] for p in points])] for i, d in enumerate(dims)]
    options = {tuple(c) for c in itertools.product(*per_dim)} - {corner}
    chosen = [corner]

    def padded(buckets: list[tuple[int, ...]]) -> int:
        return sum(int(np.prod(_holder(buckets, p))) for p in points)

    while len(chosen) < most and options:
        best = min(options, key=lambda b: (padded([*chosen, b]), b))
        if padded([*chosen, best]) >= padded(chosen):
            break
        chosen.append(best)
        options.remove(best)
    served = dict.fromkeys(chosen, 0)
    for p in points:
        served[_holder(chosen, p)] += 1
    return [Bucket(values=list(b), share=served[b] / len(points))
            for b in sorted(chosen, key=lambda b: (int(np.prod(b)), b))]


def builds_affordable(seconds: float, first_round_s: float) -> int:
    """How many static builds a tuning time can tune (at least one): each needs a first round for its tasks, and a
    build whose kernels get no trial keeps TVM's untuned default schedules (PP-OCRv4's recognizer, 3 width buckets
    in 100 s of its 61 tasks' 14-minute first round: 33x slower than onnxruntime), which is slower than padding a
    request up to a larger, tuned bucket."""
    return max(1, int(seconds // first_round_s)) if first_round_s > 0 else MAX_GRID


def split_trials(trials: int, buckets: list[Bucket]) -> dict[tuple[int, ...], int]:
    """The one budget shared by traffic share (every bucket gets its share, rounded; the remainder to the
    largest share)."""
    out = {b.key: int(trials * b.share) for b in buckets}
    top = max(buckets, key=lambda b: b.share).key
    out[top] += trials - sum(out.values())
    return out
