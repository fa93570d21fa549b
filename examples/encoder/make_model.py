"""Write a 4-layer transformer encoder (hidden 256, 4 heads, FFN 1024, seq 128) with random weights.

    python examples/encoder/make_model.py [--out model.onnx]

Input `hidden` [batch, 128, 256] float32 (embeddings already looked up); output `encoded` of the same shape.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN, HEADS, FFN, SEQ, LAYERS = 256, 4, 1024, 128, 4


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    def dense(x, din, dout, name):
        w = const(f"{name}_w", (rng.standard_normal((din, dout)) / np.sqrt(din)).astype(np.float32))
        b = const(f"{name}_b", np.zeros(dout, np.float32))
        return node("Add", [node("MatMul", [x, w], f"{name}_mm"), b], f"{name}_out")

    def layer_norm(x, name):
        g = const(f"{name}_g", np.ones(HIDDEN, np.float32))
        b = const(f"{name}_beta", np.zeros(HIDDEN, np.float32))
        return node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=1e-5)

    head_dim = HIDDEN // HEADS
    split_shape = const("split_shape", np.array([1, SEQ, HEADS, head_dim], np.int64))
    merge_shape = const("merge_shape", np.array([1, SEQ, HIDDEN], np.int64))
    scale = const("scale", np.array(1 / np.sqrt(head_dim), np.float32))
    x = "hidden"
    for i in range(LAYERS):
        p = f"l{i}"
        heads = {}
        for t in ("q", "k", "v"):
            proj = dense(x, HIDDEN, HIDDEN, f"{p}_{t}")
            r = node("Reshape", [proj, split_shape], f"{p}_{t}_split")
            perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
            heads[t] = node("Transpose", [r], f"{p}_{t}_heads", perm=perm)
        scores = node("Mul", [node("MatMul", [heads["q"], heads["k"]], f"{p}_qk"), scale], f"{p}_scores")
        attn = node("Softmax", [scores], f"{p}_attn", axis=-1)
        ctx = node("Transpose", [node("MatMul", [attn, heads["v"]], f"{p}_ctx")], f"{p}_ctx_t", perm=[0, 2, 1, 3])
        merged = node("Reshape", [ctx, merge_shape], f"{p}_merged")
        x = layer_norm(node("Add", [x, dense(merged, HIDDEN, HIDDEN, f"{p}_o")], f"{p}_res1"), f"{p}_ln1")
        h = dense(x, HIDDEN, FFN, f"{p}_ff1")
        h = node("Relu", [h], f"{p}_ff_act")
        x = layer_norm(node("Add", [x, dense(h, FFN, HIDDEN, f"{p}_ff2")], f"{p}_res2"), f"{p}_ln2")
    nodes.append(helper.make_node("Identity", [x], ["encoded"], name="output"))
    graph = helper.make_graph(nodes, "encoder",
                              [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
                              [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, [1, SEQ, HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-example")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("model.onnx"))
    args = parser.parse_args()
    onnx.save(build(), str(args.out))
    # a sample request for `kiln client` (generic tensor protocol), random but reproducible
    sample = np.random.default_rng(1).standard_normal([1, SEQ, HIDDEN]).astype(np.float32).round(3)
    args.out.with_name("request.json").write_text(json.dumps({"inputs": {"hidden": sample.tolist()}}))
    print(f"wrote {args.out} and {args.out.with_name('request.json')}")


if __name__ == "__main__":
    main()
