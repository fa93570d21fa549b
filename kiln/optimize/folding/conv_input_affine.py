"""Mul/Add by scalar constants whose result only unpadded convolutions read, folded into those convolutions:
conv(a * h + b) = conv'(h) with W' = W * a and B' = B + b * sum(W) per output channel.

Only where the convolution pads nothing: a padded border reads zeros, not a * 0 + b, so the fold would change
the border. What stays in front of a padded convolution is affine-batchnorm's (a Pad with the value -b / a
would keep the fold exact, but measured slower: the Pad leaves onnxruntime's blocked layout too)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from kiln.optimize.folding.affine import compose, step
from kiln.optimize.folding.conv import parameters, replace
from kiln.optimize.folding.graph import Graph


def _unpadded(graph: Graph, conv: onnx.NodeProto, tensor: str) -> bool:
    if conv.op_type != "Conv" or conv.input[0] != tensor or tensor in conv.input[1:]:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    return (parameters(graph, conv) is not None and not any(attrs.get("pads", []))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))


def _scalar_step(graph: Graph, node: onnx.NodeProto | None, x: str) -> np.ndarray | None:
    value = None if node is None else step(graph, node, x)
    return value.reshape(()) if value is not None and value.size == 1 else None


def fold(graph: Graph) -> int:
    folded = 0
    for end in graph.live():
        tensor = end.output[0] if end.output else ""
        convs = graph.readers(tensor)
        if (id(end) in graph.dead or not convs or tensor in graph.outputs
                or not all(_unpadded(graph, c, tensor) for c in convs)):
            continue
        # walk back from the tensor the convolutions read through single-reader scalar affine steps
        chain, source = [], tensor
        while (node := graph.producer(source)) is not None and id(node) not in graph.dead:
            x = next((i for i in node.input if graph.constant(i) is None), None)
            if x is None or _scalar_step(graph, node, x) is None or chain and graph.only_reader(source) is None:
                break
            chain.insert(0, node)
            source = x
        if not chain:
            continue
        a, b = np.float32(1), np.float32(0)
        x = source
        for node in chain:
            a, b = compose(a, b, node.op_type, _scalar_step(graph, node, x))
            x = node.output[0]
        for conv in convs:
            weight, bias = parameters(graph, conv)
            conv.input[0] = source
            replace(graph, conv, weight * a, bias + b * weight.reshape(weight.shape[0], -1).sum(axis=1), "in_folded")
        graph.remove(*chain)
        graph.reindex()
        folded += 1
    return folded
