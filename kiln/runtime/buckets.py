"""A TVM build per shape bucket behind one runner: a request is padded up to the smallest bucket that holds it
and its outputs are cut back, the way static-shape engines serve dynamic traffic.

A grid of buckets varies two dimensions (a text detector's height and width): a request is padded on both. Inputs
are padded along each bucketed dimension with the program's pad values (Dim.padding, else 0: a mask padded
with zeros makes the padded positions inert in an attention model); outputs are cut back by the one rule the
batcher uses too (Dim.cut): exactly the profile's output axes of each dimension (named or traced). An output axis
the profile does not relate to it is never cut, even when it is as long as the bucket; an output whose shape then
differs from the unpadded model's fails the candidate. Whether padding leaves a model's outputs inside the ranges
is not assumed: the evaluation runs every sample through this runner, padded like any request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kiln.artifact.specs import Dim, Profile, TensorSpec

Key = tuple[int, ...]  # a bucket: one value per bucketed dimension


def as_key(bucket: int | Sequence[int]) -> Key:
    """A bucket as a tuple: an old manifest's (and a 1-D grid's) int is a 1-tuple."""
    return (int(bucket),) if isinstance(bucket, int | np.integer) else tuple(int(v) for v in bucket)


def bucket_file(bucket: int | Sequence[int]) -> str:
    """bucket-64.so for one dimension (as artifacts before grids have it), bucket-48x320.so for two."""
    return f"bucket-{'x'.join(str(v) for v in as_key(bucket))}.so"


class BucketRunner:
    """One runner per bucket of `dims` (one dimension, or two: a grid), each a static build (`load(module, input
    specs)`: a TvmRunner). A request goes to the bucket of least padded work (the product of its values) that
    holds it on every dimension."""

    backend = "tvm"

    def __init__(self, folder: Path, dims: Dim | list[Dim], buckets: Sequence[int | Sequence[int]],
                 inputs: list[TensorSpec], load: Callable[[Path, list[TensorSpec]], object]):
        self.dims = [dims] if isinstance(dims, Dim) else list(dims)
        self.buckets = sorted((as_key(b) for b in buckets), key=lambda k: (int(np.prod(k)), k))
        self.runners = {b: load(folder / bucket_file(b), at_values(inputs, self.dims, b)) for b in self.buckets}

    def bucket_for(self, values: Key) -> Key:
        for b in self.buckets:
            if all(v <= limit for v, limit in zip(values, b, strict=True)):
                return b
        named = ", ".join(f"{d.name} = {v}" for d, v in zip(self.dims, values, strict=True))
        raise ValueError(f"{named} is above every bucket ({', '.join(map(bucket_file, self.buckets))})")

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = tuple(d.value(feed) for d in self.dims)
        if any(v is None for v in values):
            raise ValueError(f"the feed has none of {' / '.join(d.name for d in self.dims)}'s inputs")
        bucket = self.bucket_for(values)  # type: ignore[arg-type]
        if bucket == values:
            return self.runners[bucket].run(feed)
        for dim, b in zip(self.dims, bucket, strict=True):
            feed = dim.pad(feed, b)
        out = self.runners[bucket].run(feed)
        for dim, v in zip(self.dims, values, strict=True):
            out = dim.cut(out, v)  # type: ignore[arg-type]
        return out

    def close(self) -> None:
        for r in self.runners.values():
            r.close()


def at_values(specs: list[TensorSpec], dims: list[Dim], bucket: Key) -> list[TensorSpec]:
    """`specs` with the axes of each of `dims` at its value in `bucket` (a bucket's build)."""
    return Profile(dims=dims).at(specs, {d.name: v for d, v in zip(dims, bucket, strict=True)})

