"""Conv -> Mul/Add by constants (a scalar or one value per output channel) folded into the Conv's weights and
bias: conv(x) * a + b = conv'(x) with W' = W * a and B' = B * a + b. Exact: the affine reads only the
convolution's output, per channel."""

from __future__ import annotations

import numpy as np

from kiln.optimize.folding.affine import compose, step
from kiln.optimize.folding.conv import parameters, replace
from kiln.optimize.folding.graph import Graph


def per_channel(value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """`value` as one number per output channel of a rank-`rank` NCHW tensor, or None when it broadcasts over
    anything but the channel axis (or would grow the tensor)."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float32)


def fold(graph: Graph) -> int:
    folded = 0
    for conv in graph.live():
        params = parameters(graph, conv)
        if params is None:
            continue
        weight, bias = params
        channels = weight.shape[0]
        a, b = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        chain, tensor = [], conv.output[0]
        while (reader := graph.only_reader(tensor)) is not None:
            value = step(graph, reader, tensor)
            c = None if value is None else per_channel(value, weight.ndim, channels)
            if c is None:
                break
            a, b = compose(a, b, reader.op_type, c)
            chain.append(reader)
            tensor = reader.output[0]
        if not chain:
            continue
        scale = a.reshape((channels,) + (1,) * (weight.ndim - 1))
        replace(graph, conv, weight * scale, bias * a + b, "folded")
        conv.output[0] = tensor
        graph.remove(*chain)
        folded += 1
    graph.reindex()
    return folded
