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
