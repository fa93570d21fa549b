"""Chains of elementwise Mul/Add/Sub/Div by constants, read as one affine map y = a * x + b."""

from __future__ import annotations

import numpy as np
import onnx

from kiln.optimize.folding.graph import Graph

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def step(graph: Graph, node: onnx.NodeProto, x: str) -> np.ndarray | None:
    """The constant `node` combines with tensor `x` when it is one affine step of x (Sub and Div only with x
    first: c - x and c / x are not affine in the same form), else None."""
    if node.op_type not in AFFINE_OPS or len(node.input) != 2 or x not in node.input:
        return None
    other = node.input[1] if node.input[0] == x else node.input[0]
    if other == x or node.op_type in ("Sub", "Div") and node.input[0] != x:
        return None
    value = graph.constant(other)
    if value is None or value.dtype != np.float32 or node.op_type == "Div" and not np.all(value):
        return None  # a division by zero is not an affine map
    return value


def compose(a: np.ndarray, b: np.ndarray, op: str, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of y = a * x + b after one more step `op` by constant c."""
    if op == "Mul":
        return a * c, b * c
    if op == "Div":
        return a / c, b / c
    return a, b + c if op == "Add" else b - c
