"""Ragged tensors: one array per sample, each of its own shape (sentences at their own lengths).

Held as 1-D numpy object arrays, so that slicing, fancy indexing and `len` work as on regular sample arrays;
code that must look inside (metrics, feeds) asks `is_ragged` and goes per sample.
"""

from __future__ import annotations

import numpy as np


def of(parts: list) -> np.ndarray:
    """A 1-D object array holding each part as it is (np.array would try to broadcast them)."""
    out = np.empty(len(parts), dtype=object)
    for i, part in enumerate(parts):
        out[i] = part
    return out


def is_ragged(arr: object) -> bool:
    """An object array of per-sample arrays (not an array of strings or Python objects)."""
    return isinstance(arr, np.ndarray) and arr.dtype == object and arr.ndim == 1 and bool(len(arr)) and \
        isinstance(arr[0], list | tuple | np.ndarray)


def samples(arr: np.ndarray) -> list[np.ndarray]:
    """Each sample's array: the parts of a ragged array, or the rows of a regular one."""
    return [np.asarray(x) for x in arr] if is_ragged(arr) else list(np.asarray(arr))
