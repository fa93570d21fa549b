"""A TVM build per shape bucket behind one runner: a request is padded up to the smallest bucket that holds it
and its outputs are cut back, the way static-shape engines serve dynamic traffic.

Inputs are padded along the bucketed dimension with the program's pad values (Dim.padding, else 0: a mask padded
with zeros makes the padded positions inert in an attention model); outputs are cut back by the one rule the
batcher uses too (Dim.cut): exactly the profile's output axes of that dimension. An output axis the profile does
not relate to it is never cut, even when it is as long as the bucket; an output whose shape then differs from the
unpadded model's fails the candidate. Whether padding leaves a model's outputs inside the ranges is not assumed:
the evaluation runs every sample through this runner, padded like any request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from kiln.artifact.specs import Dim, Profile, TensorSpec


def bucket_file(value: int) -> str:
    return f"bucket-{value}.so"


class BucketRunner:
    """One runner per bucket value of `dim` (`load(module, input specs)`: a TvmRunner), each a static build."""

    backend = "tvm"

    def __init__(self, folder: Path, dim: Dim, buckets: list[int], inputs: list[TensorSpec],
                 load: Callable[[Path, list[TensorSpec]], object]):
        self.dim, self.buckets = dim, sorted(buckets)
        self.runners = {b: load(folder / bucket_file(b), [at_value(s, dim, b) for s in inputs]) for b in self.buckets}

    def bucket_for(self, value: int) -> int:
        for b in self.buckets:
            if value <= b:
                return b
        raise ValueError(f"{self.dim.name} = {value} is above the largest bucket {self.buckets[-1]}")

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        value = self.dim.value(feed)
        if value is None:
            raise ValueError(f"the feed has none of {self.dim.name}'s inputs")
        bucket = self.bucket_for(value)
        if bucket == value:
            return self.runners[bucket].run(feed)
        return self.dim.cut(self.runners[bucket].run(self.dim.pad(feed, bucket)), value)

    def close(self) -> None:
        for r in self.runners.values():
            r.close()


def at_value(spec: TensorSpec, dim: Dim, value: int) -> TensorSpec:
    """`spec` with the axes of `dim` at `value` (a bucket's build)."""
    return Profile(dims=[dim]).at([spec], {dim.name: value})[0]
