"""An affine chain after a convolution that no convolution could absorb, rewritten as one BatchNormalization
(scale, bias, mean 0, variance 1, epsilon 0: y = scale * x + bias exactly).

What is left for this pass is the affine in front of a padded convolution (conv-input-affine cannot fold it:
the border reads zeros, not a * 0 + b). As Mul and Add, onnxruntime runs it as two passes in the plain layout,
with a reorder out of the blocked (NCHWc) layout before and one back after; as a BatchNormalization behind a
blocked convolution, its NCHWc transformer runs it as a blocked 1x1 depthwise convolution and the chain stays
blocked. PP-OCRv4's recognizer: 16 such chains, 1.14-1.17x faster than with the other folds alone (AMD EPYC,
2 threads, in the same rounds)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from kiln.optimize.folding.affine import compose, step
from kiln.optimize.folding.conv import parameters
from kiln.optimize.folding.graph import Graph

# elementwise activations a convolution's output may pass through first (onnxruntime fuses them into the
# blocked convolution, so its output is still blocked)
_ACTIVATIONS = ("Relu", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu", "Clip", "Tanh")
_OPSET = 9  # BatchNormalization's inputs and attributes as they are today


def _channels(graph: Graph, x: str) -> int | None:
    """The channel count of `x` when a 2-D convolution (maybe through one activation) produces it."""
    node = graph.producer(x)
    if node is not None and node.op_type in _ACTIVATIONS:
        node = graph.producer(node.input[0])
    params = None if node is None else parameters(graph, node)
    return params[0].shape[0] if params is not None and params[0].ndim == 4 else None


def _per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """The constant as one value per channel, when it is a scalar or varies along the channel axis only."""
    if value is None:
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(()), np.float32)
    if value.shape in ((channels, 1, 1), (1, channels, 1, 1)):
        return value.reshape(channels).astype(np.float32)
    return None


def rewrite(graph: Graph) -> int:
    if graph.opset() < _OPSET:
        return 0
    rewritten = 0
    for first in graph.live():
        if id(first) in graph.dead or first.op_type not in ("Mul", "Add", "Sub", "Div"):
            continue
        x = next((i for i in first.input if graph.constant(i) is None), None)
        channels = None if x is None else _channels(graph, x)
        if channels is None or graph.only_reader(x) is not first:
            continue
        a, b = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        chain, source, node = [], x, first
        while node is not None and (c := _per_channel(step(graph, node, source), channels)) is not None:
            a, b = compose(a, b, node.op_type, c)
            chain.append(node)
            source = node.output[0]
            node = graph.only_reader(source)
        if not chain:
            continue
        first.op_type = "BatchNormalization"
        del first.input[:]
        first.input.extend([x, graph.add_constant(f"{x}_affine_scale", a), graph.add_constant(f"{x}_affine_bias", b),
                            graph.add_constant(f"{x}_affine_mean", np.zeros(channels)),
                            graph.add_constant(f"{x}_affine_var", np.ones(channels))])
        del first.attribute[:]
        first.attribute.append(helper.make_attribute("epsilon", 0.0))
        first.output[0] = chain[-1].output[0]
        graph.remove(*chain[1:])
        graph.reindex()
        rewritten += 1
    return rewritten
