"""A TVM build per shape bucket behind one runner: a request is padded up to the smallest bucket that holds it
and its outputs are cut back, the way static-shape engines serve dynamic traffic.

Inputs are padded along the bucketed dimension with the program's pad values (`padding`, else 0: a mask padded
with zeros makes the padded positions inert in an attention model); outputs are cut back on the axes the model
names like that dimension (Dim.outputs), or, for an output it names none of, on each axis after the first as
long as the bucket. An output whose shape then differs from the unpadded model's fails the candidate.
Whether padding leaves a model's outputs inside the ranges is not assumed: the evaluation runs every sample
through this runner, padded like any request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from kiln.artifact.specs import Dim, TensorSpec


def bucket_file(value: int) -> str:
    return f"bucket-{value}.so"


class BucketRunner:
    """One runner per bucket value of `dim` (`load(module, input specs)`: a TvmRunner), each a static build."""

    backend = "tvm"

    def __init__(self, folder: Path, dim: Dim, buckets: list[int], inputs: list[TensorSpec],
                 load: Callable[[Path, list[TensorSpec]], object], padding: dict[str, float] | None = None):
        self.dim, self.buckets = dim, sorted(buckets)
        self.padding = padding or {}
        self.runners = {b: load(folder / bucket_file(b), [at_value(s, dim, b) for s in inputs]) for b in self.buckets}
        self.axes = [(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in dim.axes]
        self.out_axes = [(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in dim.outputs]

    def bucket_for(self, value: int) -> int:
        for b in self.buckets:
            if value <= b:
                return b
        raise ValueError(f"{self.dim.name} = {value} is above the largest bucket {self.buckets[-1]}")

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name, axis = self.axes[0]
        value = int(np.shape(feed[name])[axis])
        bucket = self.bucket_for(value)
        if bucket != value:
            feed = dict(feed)
            for inp, ax in self.axes:
                arr = feed[inp]
                widths = [(0, 0)] * arr.ndim
                widths[ax] = (0, bucket - value)
                feed[inp] = np.pad(arr, widths, constant_values=self.padding.get(inp, 0))
        outputs = self.runners[bucket].run(feed)
        return outputs if bucket == value else {n: self._cut(n, np.asarray(a), value, bucket)
                                                for n, a in outputs.items()}

    def _cut(self, name: str, arr: np.ndarray, value: int, bucket: int) -> np.ndarray:
        named = [ax for out, ax in self.out_axes if out == name]
        axes = named or [i for i in range(1, arr.ndim) if arr.shape[i] == bucket]  # unnamed: as long as the bucket
        index = [slice(None)] * arr.ndim
        for ax in axes:
            if ax < arr.ndim and arr.shape[ax] == bucket:
                index[ax] = slice(0, value)
        return arr[tuple(index)]

    def close(self) -> None:
        for r in self.runners.values():
            r.close()


def at_value(spec: TensorSpec, dim: Dim, value: int) -> TensorSpec:
    """`spec` with the axes of `dim` at `value`."""
    shape = [value if f"{spec.name}:{i}" in dim.axes else d for i, d in enumerate(spec.shape)]
    return spec.model_copy(update={"shape": shape})
