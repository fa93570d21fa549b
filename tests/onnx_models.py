"""Small ONNX models built in code for the tests (nothing with weights is committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def embedding(path: Path, vocab: int = 50, dim: int = 8, seq: int = 6) -> Path:
    """ids[int64, 1 x seq] -> Gather(table) -> ReduceMean -> logits[1, dim]."""
    table = np.random.default_rng(0).standard_normal((vocab, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed", axis=0),
         helper.make_node("ReduceMean", ["emb", "axes"], ["pooled"], name="pool", keepdims=0)],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, dim])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return _save(graph, path, opset=18)


def lstm(path: Path) -> Path:
    """An LSTM followed by a Relu: TVM's importer has no LSTM converter."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 16, 4)).astype(np.float32)
    r = rng.standard_normal((1, 16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="encoder_lstm", hidden_size=4),
         helper.make_node("Relu", ["y"], ["out"], name="act")],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [5, 1, 1, 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")])
    return _save(graph, path)


def checker_failure(path: Path) -> Path:
    """A node that reads a tensor nothing produces: onnx.checker rejects it."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "ghost"], ["y"], name="add_ghost")], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())
    return path


def runtime_shapes(path: Path) -> Path:
    """Like real exports: the reshape target and pads are computed at run time from Shape.

    x[batch, 3, 8, 8] -> Conv -> Shape->Gather->Concat->Reshape (flatten) and a Pad whose pads come from a
    computed tensor. TVM's importer rejects both until the shapes are fixed and the subgraphs folded.
    """
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["conv"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero1"], ["batch"], name="take_batch", axis=0),
        helper.make_node("Sub", ["batch", "batch"], ["z"], name="zero_from_shape"),
        helper.make_node("Concat", ["z", "z", "one", "one", "z", "z", "one", "one"], ["pads"], name="pads_at_runtime",
                         axis=0),
        helper.make_node("Pad", ["conv", "pads"], ["padded"], name="pad", mode="constant"),
        helper.make_node("Shape", ["padded"], ["pshape"], name="pshape"),
        helper.make_node("ConstantOfShape", ["pshape"], ["ones"], name="ones",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Add", ["padded", "ones"], ["shifted"], name="shift"),
        helper.make_node("Shape", ["shifted"], ["sshape"], name="sshape"),
        helper.make_node("Gather", ["sshape", "zero1"], ["b2"], name="take_batch2", axis=0),
        helper.make_node("Concat", ["b2", "minus_one"], ["target"], name="reshape_target", axis=0),
        helper.make_node("Reshape", ["shifted", "target"], ["out"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes, "runtime_shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "n"])],
        [c("w", w), c("zero1", np.array([0], np.int64)), c("one", np.array([1], np.int64)),
         c("minus_one", np.array([-1], np.int64))])
    return _save(graph, path)


def small_cnn(path: Path, size: int = 32) -> Path:
    """x[1, 3, size, size] -> Conv(16) -> Relu -> Conv(32, stride 2) -> Relu -> GlobalAveragePool -> Gemm(10)."""
    rng = np.random.default_rng(0)
    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [c("w1", rng.standard_normal((16, 3, 3, 3)) * 0.3), c("b1", np.zeros(16)),
         c("w2", rng.standard_normal((32, 16, 3, 3)) * 0.1), c("b2", np.zeros(32)),
         c("fc_w", rng.standard_normal((10, 32)) * 0.3), c("fc_b", np.zeros(10))])
    return _save(graph, path)


def slowed(model_path: Path, path: Path, layers: int = 40, width: int = 1000) -> Path:
    """The same model and the same outputs, made slow on purpose: its first output gets `0 * sum(h)` added,
    where h is `layers` rounds of tanh(h @ M) (width x width). Run with graph optimization disabled, nothing
    folds it away, so the copy is certainly many times slower: a controlled latency for gate tests."""
    model = onnx.load(str(model_path))
    graph = model.graph
    x, out = graph.input[0].name, graph.output[0].name
    for node in graph.node:
        node.output[:] = ["orig_" + o if o == out else o for o in node.output]
    flat = int(np.prod([d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]))
    rng = np.random.default_rng(1)
    graph.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((flat, width)) / np.sqrt(flat)).astype(np.float32), "slow_in"),
        numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "slow_m"),
        numpy_helper.from_array(np.zeros((), np.float32), "slow_zero")])
    nodes = [helper.make_node("Flatten", [x], ["slow_flat"]),
             helper.make_node("MatMul", ["slow_flat", "slow_in"], ["slow_h0"])]
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [f"slow_h{i}", "slow_m"], [f"slow_p{i}"]),
                  helper.make_node("Tanh", [f"slow_p{i}"], [f"slow_h{i + 1}"])]
    nodes += [helper.make_node("ReduceSum", [f"slow_h{layers}"], ["slow_sum"], keepdims=0),
              helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
              helper.make_node("Add", ["orig_" + out, "slow_nothing"], [out])]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return path
