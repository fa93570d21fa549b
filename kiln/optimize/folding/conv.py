"""A Conv's constant weights and bias, read and replaced by the folds."""

from __future__ import annotations

import numpy as np
import onnx

from kiln.optimize.folding.graph import Graph


def parameters(graph: Graph, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """(weights, bias) of a Conv whose both are float32 constants (a missing bias reads as zeros), else None."""
    if conv.op_type != "Conv" or len(conv.input) < 2:
        return None
    weight = graph.constant(conv.input[1])
    if weight is None or weight.dtype != np.float32:
        return None
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = graph.constant(conv.input[2]) if has_bias else np.zeros(weight.shape[0], np.float32)
    return None if bias is None else (weight, bias)


def replace(graph: Graph, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray, tag: str) -> None:
    """Point the Conv at new constants (named after the old ones and `tag`); the old ones stay for other readers."""
    conv.input[1] = graph.add_constant(f"{conv.input[1]}_{tag}", weight)
    name = graph.add_constant(f"{conv.name or conv.output[0]}_{tag}_bias", bias)
    if len(conv.input) > 2:
        conv.input[2] = name
    else:
        conv.input.append(name)
