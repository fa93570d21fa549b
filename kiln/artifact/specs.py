"""Plain descriptions of model inputs/outputs and the input guards every caller of a compiled model applies."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from kiln.errors import InputError


class TensorSpec(BaseModel):
    """A named tensor with a concrete shape and a numpy dtype name."""

    name: str
    dtype: str
    shape: list[int]


class IndexGuard(BaseModel):
    """Valid value range [low, high) for an integer input that indexes a Gather.

    TVM's compiled Gather does not check its indices: an out-of-range one segfaults the whole process
    ("Fast mode segfaults when there are out-of-bounds indices"), so every value is checked first.
    """

    input: str
    low: int
    high: int
    node: str


def check_index_ranges(inputs: dict[str, np.ndarray], guards: list[IndexGuard], where: str) -> None:
    """Raise before out-of-range indices can reach compiled Gather code (it would segfault)."""
    for g in guards:
        arr = inputs.get(g.input)
        if arr is None or arr.size == 0:
            continue
        if arr.dtype == object:  # samples of their own shapes: each checked, the message names the sample
            for i, part in enumerate(arr):
                check_index_ranges({g.input: np.asarray(part)}, [g], where=f"{where}, sample {i}")
            continue
        bad = (arr < g.low) | (arr >= g.high)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"input {g.input!r} holds {arr[pos]} at index {list(pos)}; it indexes {g.node!r}, whose valid "
                f"range is [{g.low}, {g.high})", where=where, hint="fix the index values before sending them")


def check_finite(inputs: dict[str, np.ndarray], where: str) -> None:
    """Refuse NaN and Inf in float inputs: a model answers them with NaN scores that look like results."""
    for name, arr in inputs.items():
        if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
            bad = ~np.isfinite(arr)
            pos = [int(i) for i in np.argwhere(bad)[0]]
            raise InputError(f"input {name!r} holds {int(bad.sum())} NaN/Inf value(s), the first ({arr[tuple(pos)]}) "
                             f"at index {pos}", where=where,
                             hint="send finite numbers (a program that wants them sets allow_nonfinite = True)")


class Dim(BaseModel):
    """A dynamic dimension's range: every input axis in `axes` ("input:axis") takes one value in [low, high]
    per call, the same value on each of them (input_ids and attention_mask share their sequence length)."""

    name: str
    low: int
    high: int
    axes: list[str]
    outputs: list[str] = []  # output axes ("output:axis") the model names the same: cut back after padding
    source: str = "declared"  # declared | data | batch default | default: where the range came from

    def describe(self) -> str:
        return f"{self.name} {self.low}..{self.high}" if self.low != self.high else f"{self.name} {self.low}"


class Profile(BaseModel):
    """The shapes an artifact accepts: the dynamic dimensions of its inputs (-1 in TensorSpec.shape), each with
    its range, like a TensorRT optimization profile; a range of one value was made concrete in the specs and is
    kept here to say where it came from. Without a varying dimension, every input has the one shape of its spec."""

    dims: list[Dim] = []

    def __bool__(self) -> bool:
        """True when some dimension varies (a range of one value is a fixed dimension, made concrete)."""
        return any(d.low != d.high for d in self.dims)

    def dim(self, name: str) -> Dim | None:
        return next((d for d in self.dims if d.name == name), None)

    def axis(self, name: str, axis: int) -> Dim | None:
        key = f"{name}:{axis}"
        return next((d for d in self.dims if key in d.axes), None)

    def shape(self, spec: TensorSpec, at: str = "high") -> list[int]:
        """The spec's shape with each dynamic dimension at its `low` or `high` end."""
        return [d if d >= 0 else getattr(self.axis(spec.name, i), at, 1) for i, d in enumerate(spec.shape)]

    def describe(self) -> str:
        return ", ".join(d.describe() for d in self.dims) or "static"

    def explain(self) -> str:
        """Each range with where it came from: `batch_size 1 (batch default), sequence_length 1..37 (data)`."""
        return ", ".join(f"{d.describe()} ({d.source})" for d in self.dims) or "static"

    def check(self, feed: dict[str, np.ndarray], specs: list[TensorSpec], where: str | None = None) -> None:
        """Raise InputError unless every input's rank and fixed dimensions fit its spec and each dynamic
        dimension is inside its range and equal on every axis it names."""
        seen: dict[str, tuple[int, str]] = {}
        for spec in specs:
            arr = feed.get(spec.name)
            if arr is None:
                continue
            shape = list(np.shape(arr))
            if len(shape) != len(spec.shape):
                raise InputError(f"input {spec.name!r} has shape {shape}, expected rank {len(spec.shape)} "
                                 f"{_pattern(spec, self)}", where=where)
            for i, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
                dim = self.axis(spec.name, i) if want < 0 else None
                if dim is None:
                    if got != want:
                        raise InputError(f"input {spec.name!r} has shape {shape}, expected {_pattern(spec, self)}",
                                         where=where)
                    continue
                if not dim.low <= got <= dim.high:
                    raise InputError(f"input {spec.name!r} has {dim.name} = {got} (axis {i}), outside the allowed "
                                     f"range {dim.low}..{dim.high}", where=where,
                                     hint=f"send {dim.name} between {dim.low} and {dim.high}" +
                                          (" (cut longer inputs, or optimize with a wider --dim)"
                                           if got > dim.high else ""))
                first = seen.setdefault(dim.name, (got, spec.name))
                if first[0] != got:
                    raise InputError(f"{dim.name} is {first[0]} in input {first[1]!r} but {got} in input "
                                     f"{spec.name!r}; the inputs must agree on it", where=where)


def _pattern(spec: TensorSpec, profile: Profile) -> str:
    parts = []
    for i, d in enumerate(spec.shape):
        dim = profile.axis(spec.name, i) if d < 0 else None
        parts.append(str(d) if dim is None else f"{dim.name}({dim.low}..{dim.high})")
    return f"[{', '.join(parts)}]"
