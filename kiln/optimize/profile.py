"""Shape profiles: a range for each dynamic dimension of the model's inputs, like TensorRT's min/max profiles.

A dimension's range is, in this order: declared (`--dim NAME=LOW..HIGH`, the program's `dims`, the request's);
1..the largest value the evaluation data shows (each sample runs at its own shape); a batch dimension's default of 1;
or, where the run asked for defaults (a registry's webhook), 1..DEFAULT_HIGH. Anything else is the user's to
say, and the error names the options. `--shape`/`shapes` still fix whole inputs, as before.
"""

from __future__ import annotations

from kiln.artifact.specs import Dim, Profile, TensorSpec
from kiln.errors import DatasetError, ModelError
from kiln.program.datasets import Samples, sample_shapes

DEFAULT_HIGH = 512  # a dynamic dimension's upper end when a run takes defaults and nothing else says


def is_batch(name: str, axes: list[str]) -> bool:
    """A batch dimension: named so (batch, batch_size, N), or an unnamed first axis."""
    lowered = name.lower()
    return all(a.endswith(":0") for a in axes) and ("batch" in lowered or lowered in ("n", "b") or ":" in name)


def seen_ranges(samples: Samples | None, dynamic: dict[str, list[str]]) -> dict[str, tuple[int, int]]:
    """Each dynamic dimension's smallest and largest value over the samples' model calls."""
    if samples is None:
        return {}
    shapes = sample_shapes(samples)
    out: dict[str, tuple[int, int]] = {}
    for name, axes in dynamic.items():
        values = [shape[a.rpartition(":")[0]][int(a.rpartition(":")[2])] for shape in shapes for a in axes
                  if a.rpartition(":")[0] in shape]
        if values:
            out[name] = (min(values), max(values))
    return out


def _canonical(declared: dict[str, tuple[int, int]], dynamic: dict[str, list[str]], specs: list[TensorSpec],
               where: str) -> dict[str, tuple[int, int]]:
    """Declared ranges keyed by the model's dimension names (INPUT:AXIS resolved to the dimension it is)."""
    out: dict[str, tuple[int, int]] = {}
    listing = "; ".join(f"{n} ({', '.join(a)})" for n, a in dynamic.items()) or "none"
    for key, bounds in declared.items():
        name = key if key in dynamic else next((n for n, axes in dynamic.items() if key in axes), None)
        if name is None:
            fixed = any(f"{s.name}:{i}" == key for s in specs for i in range(len(s.shape)))
            raise ModelError(f"a range is declared for dimension {key!r}, " +
                             ("which is fixed (by the model or a declared shape)" if fixed else
                              "which the model's inputs do not have") + f"; its dynamic dimensions are: {listing}",
                             where=where, hint="name a dynamic dimension by the model's name for it or as INPUT:AXIS")
        out[name] = bounds
    return out


def resolve(specs: list[TensorSpec], dynamic: dict[str, list[str]], declared: dict[str, tuple[int, int]],
            samples: Samples | None, where: str, defaults: bool = False) -> Profile:
    """The profile of `specs`' dynamic dimensions; ModelError naming each one nothing gives a range to."""
    ranges = _canonical(declared, dynamic, specs, where)
    seen = seen_ranges(samples, dynamic)
    dims, missing = [], []
    for name, axes in dynamic.items():
        if name in ranges:
            low, high = ranges[name]
            dims.append(Dim(name=name, low=low, high=high, axes=axes, source="declared"))
        elif is_batch(name, axes) and seen.get(name, (1, 1)) == (1, 1):  # rows: one sample per call
            dims.append(Dim(name=name, low=1, high=1, axes=axes, source="batch default"))
        elif name in seen:  # shorter than the shortest sample costs less and runs the same graph: from 1
            dims.append(Dim(name=name, low=1, high=seen[name][1], axes=axes, source="data"))
        elif defaults:
            dims.append(Dim(name=name, low=1, high=DEFAULT_HIGH, axes=axes, source="default"))
        else:
            missing.append((name, axes))
    if missing:
        named = "; ".join(f"{n} ({', '.join(a)})" for n, a in missing)
        first = missing[0][0]
        raise ModelError(f"the model has dynamic dimensions with no range: {named}", where=where,
                         hint=f"give each the lengths your traffic has: --dim {first}=LOW..HIGH (e.g. "
                              f"{first}=1..128), or dims = {{{first!r}: (LOW, HIGH)}} in program.py; or give data "
                              "(--data samples.parquet) whose samples show them; --shape INPUT=DxD fixes one shape")
    profile = Profile(dims=dims)
    if samples is not None:
        check_inside(samples, profile, where=samples.source)
    return profile


def fix_declared(specs: list[TensorSpec], dynamic: dict[str, list[str]], declared: dict[str, tuple[int, int]],
                 where: str) -> list[TensorSpec]:
    """`specs` with each dimension declared as one value (`--dim batch_size=4`) made concrete before the data is
    read, so rows of a batch are fed that many at a time, as with `--shape`."""
    fixed = {name: low for name, (low, high) in _canonical(declared, dynamic, specs, where).items() if low == high}
    axes = {axis: fixed[name] for name, found in dynamic.items() if name in fixed for axis in found}
    return [s.model_copy(update={"shape": [axes.get(f"{s.name}:{i}", d) for i, d in enumerate(s.shape)]})
            for s in specs]


def check_inside(samples: Samples, profile: Profile, where: str) -> None:
    """Every sample's dynamic dimensions inside the declared ranges (DatasetError naming the first that is not)."""
    for i, shape in enumerate(sample_shapes(samples)):
        for dim in profile.dims:
            for axis in dim.axes:
                name, _, index = axis.rpartition(":")
                if name not in shape:
                    continue
                value = shape[name][int(index)]
                if not dim.low <= value <= dim.high:
                    position = int(samples.positions[i]) if samples.batch is None else i * samples.per_feed
                    raise DatasetError(f"sample {position} has {dim.name} = {value} (input {name!r} axis {index}), "
                                       f"outside the declared range {dim.low}..{dim.high}", where=where,
                                       hint=f"widen the range (--dim {dim.name}=LOW..HIGH), or cut the sample")


def bounded(specs: list[TensorSpec], profile: Profile, at: str = "high") -> list[TensorSpec]:
    """`specs` with every dynamic dimension at its range's `low` or `high` end (sizes, warm-up calls)."""
    return [s.model_copy(update={"shape": profile.shape(s, at)}) for s in specs]


def concrete(specs: list[TensorSpec], profile: Profile) -> list[TensorSpec]:
    """`specs` with each dimension whose range holds one value made concrete: a program whose every range is
    one value is a static program, optimized and served as one (the profile still says where each came from)."""
    fixed = {d.name: d.low for d in profile.dims if d.low == d.high}
    return [s.model_copy(update={"shape": [fixed.get(getattr(profile.axis(s.name, i), "name", ""), d) if d < 0 else d
                                           for i, d in enumerate(s.shape)]}) for s in specs]
