"""x * Clip(x + 3, 0, 6) / 6, as exporters without a HardSwish op write it, rewritten as HardSwish (opset 14),
which onnxruntime fuses into the convolution before it. Both orders are recognized: (x * clip) / 6 and
x * (clip / 6), with / 6 also written as * (1 / 6)."""

from __future__ import annotations

import numpy as np
import onnx

from kiln.optimize.folding.graph import Graph

OPSET = 14  # HardSwish's first version


def _is(value: np.ndarray | None, number: float) -> bool:
    return value is not None and value.size == 1 and bool(np.isclose(float(value.reshape(())), number, rtol=1e-6))


def _by_six(graph: Graph, node: onnx.NodeProto | None, x: str) -> bool:
    """node is x / 6 or x * (1 / 6)."""
    if node is None or len(node.input) != 2 or x not in node.input:
        return False
    if node.op_type == "Div":
        return node.input[0] == x and _is(graph.constant(node.input[1]), 6.0)
    other = node.input[1] if node.input[0] == x else node.input[0]
    return node.op_type == "Mul" and _is(graph.constant(other), 1 / 6)


def _other(node: onnx.NodeProto, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def fuse(graph: Graph) -> int:
    if graph.opset() < OPSET:
        return 0
    fused = 0
    for add in graph.live():
        if add.op_type != "Add" or len(add.input) != 2 or id(add) in graph.dead:
            continue
        x = next((i for i in add.input if not _is(graph.constant(i), 3.0)), None)
        if x is None or x == add.input[0] == add.input[1] or not _is(graph.constant(_other(add, x)), 3.0):
            continue
        clip = graph.only_reader(add.output[0])
        if (clip is None or clip.op_type != "Clip" or len(clip.input) != 3 or clip.input[0] != add.output[0]
                or not _is(graph.constant(clip.input[1]), 0.0) or not _is(graph.constant(clip.input[2]), 6.0)):
            continue
        after = graph.only_reader(clip.output[0])
        if after is None:
            continue
        if after.op_type == "Mul" and _other(after, clip.output[0]) == x:  # (x * clip) / 6
            last = graph.only_reader(after.output[0])
            if not _by_six(graph, last, after.output[0]):
                continue
        elif _by_six(graph, after, clip.output[0]):  # x * (clip / 6)
            last = graph.only_reader(after.output[0])
            if last is None or last.op_type != "Mul" or _other(last, after.output[0]) != x:
                continue
        else:
            continue
        add.op_type = "HardSwish"
        del add.input[:]
        add.input.append(x)
        add.output[0] = last.output[0]
        graph.remove(clip, after, last)
        graph.reindex()
        fused += 1
    return fused
