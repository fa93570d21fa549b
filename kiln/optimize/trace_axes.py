"""Output axes whose length follows a varying input dimension without its name: a text-line recognizer's time
steps are about width / 8, a detector's map height / 4 x width / 4, and nothing in the graph says so.

Each is traced by running the model (onnxruntime) at several values of the dimension (one real sample, cut or
padded along it as a bucket pads a request) and fitting out = floor((in + offset) / stride), the form every chain
of strided convolutions and poolings reduces to. A relation is recorded (Dim.traced) only when the probes decide
it for every value of the range; padded outputs are then cut back by it (Dim.cut), the way an axis named like the
input is. An axis the probes do not decide stays unrelated: never cut, so a padded build whose outputs differ
fails its candidate instead of being guessed at. A model that runs only at multiples of a stride (a detector
taking sides of 32 k) decides nothing from arbitrary sizes: where every sample's value shares a divisor, the
probes and the fit keep to its multiples (TracedAxis.step says so).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kiln.artifact.specs import Axis, Dim, Profile, TracedAxis, head

_log = logging.getLogger("kiln.optimize")

MAX_STRIDE = 64
PROBES = 12  # values of the dimension the model runs at (its own value, the ends, steps near both)

Feed = dict[str, np.ndarray]


def fit(points: list[tuple[int, int]], low: int, high: int, step: int = 1) -> tuple[int, int] | None:
    """(stride, offset) with out = floor((in + offset) / stride) at every (in, out) point, when every relation
    that fits the points predicts the same lengths over the multiples of `step` in [low, high]; None when none
    fits or the points leave it open."""
    if len(points) < 3 or len({o for _, o in points}) < 2:
        return None
    values = np.arange(-(-max(low, 1) // step) * step, high + 1, step)
    found: tuple[int, int, np.ndarray] | None = None
    for stride in range(1, MAX_STRIDE + 1):
        for offset in range(-4 * stride - 16, 4 * stride + 17):
            if all((v + offset) // stride == o for v, o in points):
                predicted = (values + offset) // stride
                if found is None:
                    found = (stride, offset, predicted)
                elif not np.array_equal(found[2], predicted):
                    return None
    return (found[0], found[1]) if found else None


def probe_values(dim: Dim, own: int, step: int = 1) -> list[int]:
    """The values the model runs at: its sample's own, the range's ends, consecutive steps below the top (they
    pin the offset) and a few spread between; all multiples of `step` where every sample's value is one (a
    detector that takes only multiples of 32 is probed at those, and its relation fitted over them)."""
    low, high = -(-max(dim.low, 1) // step) * step, dim.high // step * step
    top = range(high, max(low, high - 7 * step) - 1, -step)
    spread = (np.linspace(low, high, 5) / step).round().astype(int) * step
    values = sorted(v for v in {own, low, low + step, *top, *spread.tolist()} if low <= v <= high and v % step == 0)
    return values[-PROBES:] if len(values) > PROBES else values


def feed_at(feed: Feed, dim: Dim, value: int) -> Feed:
    """`feed` with every axis of `dim` cut or padded (Dim.pad: the program's pad values) to `value`."""
    out = dict(dim.pad(feed, value))
    for a in dim.axes:
        arr = out.get(a.tensor)
        if arr is not None and arr.shape[a.index] > value:
            out[a.tensor] = np.ascontiguousarray(head(arr, a.index, value))
    return out


def trace(model_path: Path, profile: Profile, feed: Feed, output_names: list[str],
          steps: dict[str, int] | None = None) -> Profile:
    """`profile` with each varying dimension's traced output axes (those no output names like the input);
    `steps`: a dimension's common divisor over the data's samples (probes and fit keep to its multiples)."""
    varying = [d for d in profile.dims if d.varies and not d.batch]
    if not varying:
        return profile
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a probe size the model refuses is expected: not an error to print
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    named = {a for d in profile.dims for a in d.outputs}
    dims = []
    for dim in profile.dims:
        if dim not in varying or dim.value(feed) is None:
            dims.append(dim)
            continue
        traced: list[TracedAxis] = []
        # every value first; where that decides nothing (a detector refusing sizes off its stride), the
        # multiples of the data's common divisor only
        for step in dict.fromkeys((1, (steps or {}).get(dim.name, 1))):
            shapes = _probe(session, output_names, feed, dim, step)
            done = {(t.tensor, t.index) for t in traced}
            for i, name in enumerate(output_names):
                for axis in range(min((len(s[i]) for s in shapes.values()), default=0)):
                    if Axis(name, axis) in named or (axis == 0 and profile.batch is not None) or \
                            (name, axis) in done:
                        continue
                    relation = fit([(v, s[i][axis]) for v, s in shapes.items()], dim.low, dim.high, step)
                    if relation:
                        traced.append(TracedAxis(tensor=name, index=axis, stride=relation[0], offset=relation[1],
                                                 step=step))
        if traced:
            _log.info("traced output axes of %s: %s", dim.name, ", ".join(t.describe(dim.name) for t in traced))
        dims.append(dim.model_copy(update={"traced": traced}))
    return Profile(dims=dims)


def _probe(session, output_names: list[str], feed: Feed, dim: Dim, step: int) -> dict[int, list[tuple[int, ...]]]:
    """Each probe value's output shapes (a size the model cannot take is left out of the fit)."""
    shapes: dict[int, list[tuple[int, ...]]] = {}
    for value in probe_values(dim, dim.value(feed) or dim.high, step):
        try:
            shapes[value] = [np.shape(o) for o in session.run(output_names, feed_at(feed, dim, value))]
        except Exception:  # onnxruntime raises its own types for a shape it refuses
            continue
    return shapes
