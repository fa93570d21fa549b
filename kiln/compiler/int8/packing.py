"""Weights in the layout an int8 dot intrinsic reads, and the constants that undo an activation zero point.

A u8 x s8 dot instruction multiplies 4 (or 2) consecutive activations by the same 4 (or 2) weights of each of
16 (or 8) output columns: the weight matrix [K, N] is stored as [N / n_lanes, K / k_lanes, n_lanes, k_lanes],
so each instruction reads one contiguous block (topi's dense_vnni layout). Activations carry a zero point z:
sum_k (a_k - z) * w_kn = sum_k a_k * w_kn - z * colsum_n, so the integer matmul runs on the raw u8 values and
one int32 vector per layer corrects it in the epilogue.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.int8.intrinsics import Intrinsic


def pack(w_kn: np.ndarray, intrin: Intrinsic) -> np.ndarray:
    """[K, N] int8 -> [N / n_lanes, K / k_lanes, n_lanes, k_lanes] int8."""
    k, n = w_kn.shape
    nl, kl = intrin.n_lanes, intrin.k_lanes
    return np.ascontiguousarray(w_kn.astype(np.int8).T.reshape(n // nl, nl, k // kl, kl).transpose(0, 2, 1, 3))


def unpack(packed: np.ndarray) -> np.ndarray:
    """The inverse of `pack`: [K, N]."""
    no, ko, nl, kl = packed.shape
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3).reshape(no * nl, ko * kl).T)


def column_sums(w_kn: np.ndarray) -> np.ndarray:
    return w_kn.astype(np.int32).sum(axis=0).astype(np.int32)
