"""Shape buckets for TVM, whose builds are static: a few values of the one varying dimension, chosen from the
data's histogram, each compiled (and tuned, largest traffic share first, within the one budget) at its value;
kiln.runtime.buckets pads each request up to the smallest bucket that holds it.

The largest bucket is the profile's upper end, so every shape in the profile is served. The others are powers of
two, added one at a time where they save the most padded work over the samples (the work of a call taken as
proportional to the bucket's length), so short common lengths get a build of their own.
"""

from __future__ import annotations

from pydantic import BaseModel

from kiln.artifact.specs import Dim, Profile

MAX_BUCKETS = 3
SMALLEST = 8


class Bucket(BaseModel):
    value: int
    share: float  # of the samples this bucket serves


def bucketed_dim(profile: Profile) -> tuple[Dim | None, str | None]:
    """(the dimension buckets vary, None) or (None, why TVM cannot bucket this profile)."""
    varying = profile.varying
    if len(varying) != 1:
        return None, (f"TVM's per-bucket builds vary one dimension, and this profile varies {len(varying)} "
                      f"({profile.describe()}); fix the others with --dim NAME=N or --shape")
    dim = varying[0]
    if dim.batch:
        return None, (f"TVM's per-bucket builds vary a length, not the batch ({dim.describe()}); serve batches with "
                      "onnxruntime, or fix the batch with --dim")
    return dim, None


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
    return [Bucket(value=b, share=served[b] / len(values)) for b in ordered]


def split_trials(trials: int, buckets: list[Bucket]) -> dict[int, int]:
    """The one budget shared by traffic share (every bucket gets its share, rounded; the remainder to the
    largest share)."""
    out = {b.value: int(trials * b.share) for b in buckets}
    top = max(buckets, key=lambda b: b.share).value
    out[top] += trials - sum(out.values())
    return out
