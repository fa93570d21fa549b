"""Plain descriptions of model inputs/outputs and the input guards every caller of a compiled model applies."""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, NamedTuple

import numpy as np
from pydantic import BaseModel, BeforeValidator, PlainSerializer, model_validator

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


class Axis(NamedTuple):
    """One axis of a named input or output tensor. Manifests and `--dim` write it as "name:index" (the name may
    hold colons itself: tf2onnx names tensors "x:0"); that text form is read and written here only."""

    tensor: str
    index: int

    def __str__(self) -> str:
        return f"{self.tensor}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> Axis:
        """"name:index" -> Axis; ValueError when the text is not of that form."""
        name, sep, index = text.rpartition(":")
        if not sep or not name or not index.isdigit():
            raise ValueError(f"{text!r} is not an axis: write it as TENSOR:INDEX, e.g. input_ids:1")
        return cls(name, int(index))

    @classmethod
    def of(cls, value: object) -> Axis:
        """An Axis from itself, its text form or a (name, index) pair."""
        if isinstance(value, Axis):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        name, index = value  # type: ignore[misc]
        return cls(str(name), int(index))


# In JSON an axis stays the string earlier manifests hold ("input_ids:1"), so their dims load unchanged.
AxisField = Annotated[Axis, BeforeValidator(Axis.of), PlainSerializer(str, return_type=str)]


def is_batch(name: str, axes: list[Axis]) -> bool:
    """The one rule for a batch dimension: every axis it names is a first axis, and it is named so (batch,
    batch_size, N, B) or not named at all (its name is its axis's own)."""
    lowered = name.lower()
    return bool(axes) and all(a.index == 0 for a in axes) and (
        "batch" in lowered or lowered in ("n", "b") or name in {str(a) for a in axes})


class TracedAxis(BaseModel):
    """An output axis whose length follows a dimension it is not named like: length = floor((value + offset) /
    stride), found by running the model at several values (kiln.optimize.trace_axes)."""

    tensor: str
    index: int
    stride: int = 1
    offset: int = 0
    step: int = 1  # fitted over the multiples of `step` only (every sample's value was one): a model taking those

    def length(self, value: int) -> int:
        return (value + self.offset) // self.stride

    def describe(self, dim: str) -> str:
        inner = f"{dim} {'+' if self.offset >= 0 else '-'} {abs(self.offset)}" if self.offset else dim
        return f"{self.tensor}:{self.index} = " + (f"floor(({inner}) / {self.stride})" if self.stride != 1 else inner)


class Dim(BaseModel):
    """A dynamic dimension's range: every input axis in `axes` takes one value in [low, high] per call, the same
    value on each of them (input_ids and attention_mask share their sequence length)."""

    name: str
    low: int
    high: int
    axes: list[AxisField]
    outputs: list[AxisField] = []  # output axes of this dimension: the only ones cut back after padding
    traced: list[TracedAxis] = []  # output axes whose length follows this dimension by a traced relation
    batch: bool = False  # decided once, when the profile is resolved (is_batch); a manifest without it: by is_batch
    padding: dict[str, float] = {}  # the program's pad value per input of `axes`: requests may be padded along it
    source: str = "declared"  # declared | data | data: every sample | batch default | default: where it came from

    @model_validator(mode="before")
    @classmethod
    def _batch_of_old_manifests(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch" not in data and "name" in data:
            data = {**data, "batch": is_batch(data["name"], [Axis.of(a) for a in data.get("axes", [])])}
        return data

    def describe(self) -> str:
        return f"{self.name} {self.low}..{self.high}" if self.low != self.high else f"{self.name} {self.low}"

    @property
    def varies(self) -> bool:
        return self.low != self.high

    @property
    def pads(self) -> bool:
        """The program says how to pad every input this dimension is on (dynamic batching may pad to it)."""
        return bool(self.axes) and all(a.tensor in self.padding for a in self.axes)

    def value(self, feed: dict[str, np.ndarray]) -> int | None:
        """This dimension's value in `feed` (its first axis present there), or None."""
        return next((int(np.shape(feed[a.tensor])[a.index]) for a in self.axes if a.tensor in feed), None)

    def pad(self, feed: dict[str, np.ndarray], value: int) -> dict[str, np.ndarray]:
        """`feed` with every axis of this dimension padded at its end up to `value` (the program's pad value per
        input, else 0: a mask padded with zeros makes the padded positions inert)."""
        out = dict(feed)
        for a in self.axes:
            arr = out.get(a.tensor)
            if arr is None or arr.shape[a.index] >= value:
                continue
            widths = [(0, 0)] * arr.ndim
            widths[a.index] = (0, value - arr.shape[a.index])
            out[a.tensor] = np.pad(arr, widths, constant_values=self.padding.get(a.tensor, 0))
        return out

    def cut(self, outputs: dict[str, np.ndarray], value: int) -> dict[str, np.ndarray]:
        """The one rule for cutting padded outputs back (the batcher's and the bucket runner's): each output axis
        of this dimension (`outputs`) back to `value`. An axis the profile does not relate to this dimension is
        never cut, even when its size happens to equal the padded one; an output left longer than the unpadded
        model's then fails the candidate's shape check instead of being guessed at. A traced axis is cut to the
        length its relation gives for `value`."""
        out = dict(outputs)
        cuts = [(a.tensor, a.index, value) for a in self.outputs] + \
            [(t.tensor, t.index, t.length(value)) for t in self.traced]
        for tensor, axis, length in cuts:
            arr = out.get(tensor)
            if arr is not None and axis < np.ndim(arr):
                out[tensor] = head(arr, axis, length)
        return out


def head(arr, axis: int, length: int) -> np.ndarray:
    """The first `length` entries of `arr` along `axis` (a view)."""
    index = [slice(None)] * np.ndim(arr)
    index[axis] = slice(0, length)
    return np.asarray(arr)[tuple(index)]


class Profile(BaseModel):
    """The shapes an artifact accepts: the dynamic dimensions of its inputs (-1 in TensorSpec.shape), each with
    its range, like a TensorRT optimization profile; a range of one value was made concrete in the specs and is
    kept here to say where it came from. Without a varying dimension, every input has the one shape of its spec."""

    dims: list[Dim] = []

    def __bool__(self) -> bool:
        """True when some dimension varies (a range of one value is a fixed dimension, made concrete)."""
        return any(d.varies for d in self.dims)

    @cached_property
    def by_axis(self) -> dict[Axis, Dim]:
        """Every input axis to its dimension: the contract's one index, built once (a profile is not changed
        after it is made; model_copy drops the index)."""
        return {a: d for d in self.dims for a in d.axes}

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Profile:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("by_axis", None)
        return copy

    def dim(self, name: str) -> Dim | None:
        return next((d for d in self.dims if d.name == name), None)

    def axis(self, tensor: str | Axis, index: int = 0) -> Dim | None:
        """The dimension of an input axis (`axis(Axis("ids", 1))` or `axis("ids", 1)`), or None when fixed."""
        return self.by_axis.get(tensor if isinstance(tensor, Axis) else Axis(tensor, index))

    @property
    def batch(self) -> Dim | None:
        """The batch dimension (Dim.batch), or None."""
        return next((d for d in self.dims if d.batch), None)

    @property
    def varying(self) -> list[Dim]:
        return [d for d in self.dims if d.varies]

    def shape(self, spec: TensorSpec, at: str = "high") -> list[int]:
        """The spec's shape with each dynamic dimension at its `low` or `high` end."""
        return [d if d >= 0 else getattr(self.axis(spec.name, i), at, 1) for i, d in enumerate(spec.shape)]

    def at(self, specs: list[TensorSpec], values: dict[str, int]) -> list[TensorSpec]:
        """`specs` with every axis of each named dimension at its value in `values` (by dimension name): the one
        way a spec is made (more) concrete: declared one-value ranges, a bucket's build, a range's end."""
        if not values:
            return specs
        return [s.model_copy(update={"shape": [values.get(getattr(self.axis(s.name, i), "name", ""), d)
                                               for i, d in enumerate(s.shape)]}) for s in specs]

    def with_padding(self, padding: dict[str, float]) -> Profile:
        """This profile with the program's pad values (input -> value) on each varying dimension but the batch."""
        return Profile(dims=[d.model_copy(update={"padding": {a.tensor: float(padding[a.tensor]) for a in d.axes
                                                               if a.tensor in padding}})
                             if d.varies and not d.batch else d for d in self.dims])

    def unrelated(self, outputs: list[TensorSpec]) -> list[Axis]:
        """Dynamic output axes (-1) no dimension names: padding an input could change them, unseen."""
        named = {a for d in self.dims for a in d.outputs} | {Axis(t.tensor, t.index) for d in self.dims
                                                              for t in d.traced}
        return [Axis(s.name, i) for s in outputs for i, d in enumerate(s.shape)
                if d < 0 and Axis(s.name, i) not in named and not (i == 0 and self.batch is not None)]

    def describe(self) -> str:
        return ", ".join(d.describe() for d in self.dims) or "static"

    def explain(self) -> str:
        """Each range with where it came from: `batch_size 1 (batch default), sequence_length 1..37 (data)`."""
        return ", ".join(f"{d.describe()} ({d.source}" + "".join(f"; {t.describe(d.name)}" for t in d.traced) + ")"
                         for d in self.dims) or "static"

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
