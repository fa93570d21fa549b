"""Shape profiles: a range for each dynamic dimension of the model's inputs, like TensorRT's min/max profiles.

A dimension's range is, in this order: declared (`--dim NAME=LOW..HIGH`, the program's `dims`, the request's);
the one value every sample of the evaluation data has (a text-line recognizer's crops are all 48 high: height is
fixed, only the width varies); 1..the largest value the data shows (each sample runs at its own shape; shorter
inputs stay accepted); a batch dimension's default of 1;
or, where the run asked for defaults (a registry's webhook), 1..DEFAULT_HIGH. Anything else is the user's to
say, and the error names the options. `--shape`/`shapes` still fix whole inputs, as before.
"""

from __future__ import annotations

from kiln.artifact.specs import Axis, Dim, Profile, TensorSpec, is_batch
from kiln.errors import DatasetError, ModelError
from kiln.program.datasets import Samples, sample_shapes

DEFAULT_HIGH = 512  # a dynamic dimension's upper end when a run takes defaults and nothing else says

Dynamic = dict[str, list[Axis]]  # each dynamic dimension's name -> the input axes it is on (kiln.optimize.inspect)


def _typed(dynamic: Dynamic) -> Dynamic:
    """`dynamic` with each axis an Axis (callers may still write "input:axis")."""
    return {name: [Axis.of(a) for a in axes] for name, axes in dynamic.items()}


def _values(shape: dict[str, tuple[int, ...]], axes: list[Axis]) -> list[tuple[Axis, int]]:
    return [(a, shape[a.tensor][a.index]) for a in axes if a.tensor in shape]


def seen_ranges(samples: Samples | None, dynamic: Dynamic) -> dict[str, tuple[int, int]]:
    """Each dynamic dimension's smallest and largest value over the samples' model calls."""
    if samples is None:
        return {}
    shapes = sample_shapes(samples)
    out: dict[str, tuple[int, int]] = {}
    for name, axes in dynamic.items():
        values = [v for shape in shapes for _, v in _values(shape, axes)]
        if values:
            out[name] = (min(values), max(values))
    return out


def _canonical(declared: dict[str, tuple[int, int]], dynamic: Dynamic, specs: list[TensorSpec],
               where: str) -> dict[str, tuple[int, int]]:
    """Declared ranges keyed by the model's dimension names (INPUT:AXIS resolved to the dimension it is)."""
    out: dict[str, tuple[int, int]] = {}
    listing = "; ".join(f"{n} ({', '.join(map(str, a))})" for n, a in dynamic.items()) or "none"
    for key, bounds in declared.items():
        try:
            axis: Axis | None = Axis.parse(key)
        except ValueError:
            axis = None
        name = key if key in dynamic else next((n for n, axes in dynamic.items() if axis in axes), None)
        if name is None:
            fixed = axis is not None and any(s.name == axis.tensor and axis.index < len(s.shape) for s in specs)
            raise ModelError(f"a range is declared for dimension {key!r}, " +
                             ("which is fixed (by the model or a declared shape)" if fixed else
                              "which the model's inputs do not have") + f"; its dynamic dimensions are: {listing}",
                             where=where, hint="name a dynamic dimension by the model's name for it or as INPUT:AXIS")
        out[name] = bounds
    return out


def resolve(specs: list[TensorSpec], dynamic: Dynamic, declared: dict[str, tuple[int, int]],
            samples: Samples | None, where: str, defaults: bool = False) -> Profile:
    """The profile of `specs`' dynamic dimensions; ModelError naming each one nothing gives a range to. Which
    dimension is the batch is decided here, once (kiln.artifact.specs.is_batch), and carried on its Dim."""
    dynamic = _typed(dynamic)
    ranges = _canonical(declared, dynamic, specs, where)
    if samples is not None:
        check_agree(samples, dynamic, where=samples.source)
    seen = seen_ranges(samples, dynamic)
    dims, missing = [], []
    for name, axes in dynamic.items():
        batch = is_batch(name, axes)
        if name in ranges:
            low, high = ranges[name]
            dims.append(Dim(name=name, low=low, high=high, axes=axes, batch=batch, source="declared"))
        elif batch and seen.get(name, (1, 1)) == (1, 1):  # rows: one sample per call
            dims.append(Dim(name=name, low=1, high=1, axes=axes, batch=batch, source="batch default"))
        elif not batch and name in seen and seen[name][0] == seen[name][1]:
            dims.append(Dim(name=name, low=seen[name][0], high=seen[name][0], axes=axes, batch=batch,
                            source="data: every sample"))
        elif name in seen:  # shorter than the shortest sample costs less and runs the same graph: from 1
            dims.append(Dim(name=name, low=1, high=seen[name][1], axes=axes, batch=batch, source="data"))
        elif defaults:
            dims.append(Dim(name=name, low=1, high=DEFAULT_HIGH, axes=axes, batch=batch, source="default"))
        else:
            missing.append((name, axes))
    if missing:
        named = "; ".join(f"{n} ({', '.join(map(str, a))})" for n, a in missing)
        first = missing[0][0]
        raise ModelError(f"the model has dynamic dimensions with no range: {named}", where=where,
                         hint=f"give each the lengths your traffic has: --dim {first}=LOW..HIGH (e.g. "
                              f"{first}=1..128), or dims = {{{first!r}: (LOW, HIGH)}} in program.py; or give data "
                              "(--data samples.parquet) whose samples show them; --shape INPUT=DxD fixes one shape")
    profile = Profile(dims=dims)
    if samples is not None:
        check_inside(samples, profile, where=samples.source)
    return profile


def fix_declared(specs: list[TensorSpec], dynamic: Dynamic, declared: dict[str, tuple[int, int]],
                 where: str) -> list[TensorSpec]:
    """`specs` with each dimension declared as one value (`--dim batch_size=4`) made concrete before the data is
    read, so rows of a batch are fed that many at a time, as with `--shape`."""
    dynamic = _typed(dynamic)
    fixed = {name: low for name, (low, high) in _canonical(declared, dynamic, specs, where).items() if low == high}
    return Profile(dims=[Dim(name=n, low=v, high=v, axes=dynamic[n]) for n, v in fixed.items()]).at(specs, fixed)


def _position(samples: Samples, i: int) -> int:
    return int(samples.positions[i]) if samples.batch is None else i * samples.per_feed


def check_agree(samples: Samples, dynamic: Dynamic, where: str) -> None:
    """Every sample's inputs agree on each dimension they share (input_ids and attention_mask of one sentence
    have one length); DatasetError naming the first sample, the dimension and both inputs that do not."""
    for i, shape in enumerate(sample_shapes(samples)):
        for name, axes in dynamic.items():
            values = _values(shape, axes)
            for axis, value in values[1:]:
                first, want = values[0]
                if value != want:
                    raise DatasetError(f"sample {_position(samples, i)} has {name} = {want} in input "
                                       f"{first.tensor!r} (axis {first.index}) but {value} in input {axis.tensor!r} "
                                       f"(axis {axis.index}); the inputs of one sample must agree on it", where=where,
                                       hint="give every input of a sample the same length (pad or cut them alike)")


def check_inside(samples: Samples, profile: Profile, where: str) -> None:
    """Every sample's dynamic dimensions inside the declared ranges (DatasetError naming the first that is not)."""
    for i, shape in enumerate(sample_shapes(samples)):
        for dim in profile.dims:
            for axis, value in _values(shape, dim.axes):
                if not dim.low <= value <= dim.high:
                    raise DatasetError(f"sample {_position(samples, i)} has {dim.name} = {value} (input "
                                       f"{axis.tensor!r} axis {axis.index}), outside the declared range "
                                       f"{dim.low}..{dim.high}", where=where,
                                       hint=f"widen the range (--dim {dim.name}=LOW..HIGH), or cut the sample")


def bounded(specs: list[TensorSpec], profile: Profile, at: str = "high") -> list[TensorSpec]:
    """`specs` with every dynamic dimension at its range's `low` or `high` end (sizes, warm-up calls)."""
    return profile.at(specs, {d.name: getattr(d, at) for d in profile.dims})


def concrete(specs: list[TensorSpec], profile: Profile) -> list[TensorSpec]:
    """`specs` with each dimension whose range holds one value made concrete: a program whose every range is
    one value is a static program, optimized and served as one (the profile still says where each came from)."""
    return profile.at(specs, {d.name: d.low for d in profile.dims if not d.varies})
