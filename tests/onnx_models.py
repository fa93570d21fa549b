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


def if_lstm(path: Path, steps: int | str = "T", batch: int | str = "B", features: int = 8, hidden: int = 4) -> Path:
    """x[T, B, features] -> If(B == 1) then LSTM(x) else LSTM(Squeeze(x)) -> the LSTM's last hidden state
    [1, B', hidden]: runs at every shape with T, B > 1 or B == 1 (the else branch, taken only when B > 1, squeezes
    nothing away), as a `x.squeeze()` in a PyTorch export does. Declared at B = 1, onnxruntime's load-time type
    inference of the untaken branch sees a rank-2 LSTM input and refuses the model (silero VAD's pattern)."""
    rng = np.random.default_rng(0)

    def branch(name: str, pre: list) -> onnx.GraphProto:
        source = pre[-1].output[0] if pre else "x"
        return helper.make_graph(
            [*pre, helper.make_node("LSTM", [source, "W", "R"], [f"{name}_y", f"{name}_h"], name=f"{name}_lstm",
                                    hidden_size=hidden),
             helper.make_node("Identity", [f"{name}_h"], [f"{name}_out"], name=f"{name}_out")],
            name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, "batch_out", hidden])])

    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
         helper.make_node("Gather", ["shape", "one"], ["batch"], name="batch"),
         helper.make_node("Equal", ["batch", "one"], ["single"], name="single"),
         helper.make_node("If", ["single"], ["h"], name="by_batch", then_branch=branch("then", []),
                          else_branch=branch("else", [helper.make_node("Squeeze", ["x"], ["xs"], name="squeeze")]))],
        "if_lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, batch, features])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch_out", hidden])],
        [numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, features)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"),
         numpy_helper.from_array(np.array(1, np.int64), "one")])
    return _save(graph, path)


def unary(path: Path, op: str, shape: tuple[int, ...] = (1, 4)) -> Path:
    """x -> OP -> y, one elementwise node (Atanh, Log, ...): NaN outside its domain, which synthetic N(0, 1)
    inputs reach."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name=op.lower())], op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
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


def small_cnn(path: Path, size: int = 32, classes: int = 10, extra: int = 0) -> Path:
    """x[1, 3, size, size] -> Conv(16) -> Relu -> Conv(32, stride 2) -> Relu [-> Conv(32) -> Relu, `extra`
    times] -> GlobalAveragePool -> Gemm(classes); the first convolutions' weights depend on neither."""
    rng = np.random.default_rng(0)
    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2_0"], name="relu2"),
        *[n for i in range(extra) for n in (
            helper.make_node("Conv", [f"r2_{i}", "w3", "b2"], [f"c3_{i}"], name=f"conv3_{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c3_{i}"], [f"r2_{i + 1}"], name=f"relu3_{i}"))],
        helper.make_node("GlobalAveragePool", [f"r2_{extra}"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        [c("w1", rng.standard_normal((16, 3, 3, 3)) * 0.3), c("b1", np.zeros(16)),
         c("w2", rng.standard_normal((32, 16, 3, 3)) * 0.1), c("b2", np.zeros(32)),
         c("fc_w", rng.standard_normal((classes, 32)) * 0.3), c("fc_b", np.zeros(classes)),
         *([c("w3", rng.standard_normal((32, 32, 3, 3)) * 0.1)] if extra else [])])
    return _save(graph, path)


def line_recognizer(path: Path, height: int | str = 8, width: int | str = "width", classes: int = 12,
                    channels: int = 16) -> Path:
    """A text-line recognizer's shape: x[1, 3, height, width] -> Conv(3x3) -> Relu -> MaxPool(2x2, stride 2) ->
    mean over the height -> [1, width // 2, channels] -> MatMul -> logits [1, width // 2, classes], one class
    score vector per time step (the CTC output a real recognizer has, its time axis half the input's width)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("ReduceMean", ["p", "height_axis"], ["m"], name="over_height", keepdims=0),
         helper.make_node("Transpose", ["m"], ["t"], name="time_major", perm=[0, 2, 1]),
         helper.make_node("MatMul", ["t", "fc"], ["logits"], name="classes")],
        "line_recognizer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "steps", classes])],
        [numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.4).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(channels, np.float32), "b"),
         numpy_helper.from_array(np.array([2], np.int64), "height_axis"),
         numpy_helper.from_array((rng.standard_normal((channels, classes)) * 0.5).astype(np.float32), "fc")])
    return _save(graph, path, opset=18)


def text_detector(path: Path, channels: int = 8) -> Path:
    """A text detector's shape: x[1, 3, height, width] -> Conv(3x3, stride 2) -> Relu -> Conv(1x1) -> Sigmoid ->
    a probability map [1, 1, (height + 1) // 2, (width + 1) // 2] whose axes are named unlike the input's."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2", "b2"], ["logit"], name="head"),
         helper.make_node("Sigmoid", ["logit"], ["map"], name="probability")],
        "text_detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 1, "map_h", "map_w"])],
        [numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.4).astype(np.float32), "w1"),
         numpy_helper.from_array(np.zeros(channels, np.float32), "b1"),
         numpy_helper.from_array((rng.standard_normal((1, channels, 1, 1)) * 0.5).astype(np.float32), "w2"),
         numpy_helper.from_array(np.zeros(1, np.float32), "b2")])
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


def tiny_bert(path: Path, layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64, seq: int = 16,
              vocab: int = 100, seed: int = 0) -> Path:
    """A BERT encoder with random weights, laid out node by node like a PyTorch/Optimum export so that
    onnxruntime.transformers' bert optimizer fuses it (EmbedLayerNormalization, Attention, SkipLayerNormalization,
    BiasGelu). Inputs input_ids/attention_mask/token_type_ids int64 [batch, sequence] (sequence <= seq);
    output last_hidden_state float32 [batch, sequence, hidden]."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def c(name, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    def w(name, *shape):
        return c(name, rng.standard_normal(shape) * 0.05)

    def n(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def ln(x, p):
        return n("LayerNormalization", [x, c(p + ".gamma", np.ones(hidden)), c(p + ".beta", np.zeros(hidden))], p,
                 axis=-1, epsilon=1e-12)

    def linear(x, p, d_in, d_out):
        return n("Add", [n("MatMul", [x, w(p + ".weight", d_in, d_out)], p + ".mm"), w(p + ".bias", d_out)], p)

    i64 = lambda name, v: c(name, v, np.int64)  # noqa: E731
    # position_ids = position_ids_buffer[:, 0:input_ids.shape[1]]: the Slice/Shape pattern the embed fusion matches
    seq_len = n("Unsqueeze", [n("Gather", [n("Shape", ["input_ids"], "ids_shape"), i64("idx1", 1)], "seq_len0",
                                axis=0), i64("axes0", [0])], "seq_len")
    pos_ids = n("Slice", [i64("position_ids_buffer", np.arange(seq)[None]), i64("zero", [0]), seq_len,
                          i64("axes1", [1]), i64("one", [1])], "position_ids")
    emb = n("Add", [n("Add", [n("Gather", [w("word_emb", vocab, hidden), "input_ids"], "word"),
                              n("Gather", [w("type_emb", 2, hidden), "token_type_ids"], "type")], "emb_wt"),
                    n("Gather", [w("pos_emb", seq, hidden), pos_ids], "pos")], "emb_sum")
    x = ln(emb, "emb_ln")
    # extended mask: (1 - mask[:, None, None, :].float()) * float_min, the Mul/Sub/Cast/Unsqueeze/Unsqueeze chain
    m = n("Cast", [n("Unsqueeze", [n("Unsqueeze", ["attention_mask", "axes1"], "mask_u1"), i64("axes2", [2])],
                     "mask_u2")], "mask_f", to=TensorProto.FLOAT)
    mask = n("Mul", [n("Sub", [c("one_f", 1.0), m], "mask_inv"), c("mask_min", np.finfo(np.float32).min)], "ext_mask")
    split, merge = i64("split_shape", [0, 0, heads, hidden // heads]), i64("merge_shape", [0, 0, hidden])
    for i in range(layers):
        p = f"l{i}"
        q, k, v = (n("Reshape", [linear(x, f"{p}.{t}", hidden, hidden), split], f"{p}.{t}.split") for t in "qkv")
        q = n("Transpose", [q], f"{p}.q.t", perm=[0, 2, 1, 3])
        k = n("Transpose", [k], f"{p}.k.t", perm=[0, 2, 3, 1])
        v = n("Transpose", [v], f"{p}.v.t", perm=[0, 2, 1, 3])
        s = n("Div", [n("MatMul", [q, k], f"{p}.qk"), c(f"{p}.scale", np.sqrt(hidden // heads))], f"{p}.qk_scaled")
        probs = n("Softmax", [n("Add", [s, mask], f"{p}.qk_masked")], f"{p}.probs", axis=-1)
        ctx = n("Transpose", [n("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t", perm=[0, 2, 1, 3])
        ctx = n("Reshape", [ctx, merge], f"{p}.ctx.merge")
        x = ln(n("Add", [linear(ctx, f"{p}.attn_out", hidden, hidden), x], f"{p}.attn_res"), f"{p}.attn_ln")
        h = linear(x, f"{p}.ffn_in", hidden, ffn)  # gelu: h * 0.5 * (1 + erf(h / sqrt(2)))
        erf = n("Erf", [n("Div", [h, c(f"{p}.sqrt2", np.sqrt(2.0))], f"{p}.gelu_div")], f"{p}.gelu_erf")
        g = n("Mul", [n("Mul", [h, c(f"{p}.half", 0.5)], f"{p}.gelu_half"),
                      n("Add", [erf, c(f"{p}.one_f", 1.0)], f"{p}.gelu_add")], f"{p}.gelu")
        x = ln(n("Add", [linear(g, f"{p}.ffn_out", ffn, hidden), x], f"{p}.ffn_res"), f"{p}.ffn_ln")
    nodes[-1].output[0] = "last_hidden_state"
    ids = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])  # noqa: E731
    graph = helper.make_graph(
        nodes, "tiny_bert", [ids("input_ids"), ids("attention_mask"), ids("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])], inits)
    _save(graph, path)
    onnx.checker.check_model(str(path))
    return path


def mlp(path: Path, widths: tuple[int, ...] = (64, 48, 32, 16)) -> Path:
    """x[1, widths[0]] -> (MatMul -> Tanh) ... -> MatMul: one TVM task per layer (each layer's shape differs), each
    a small one: the cheapest model whose tuning has several tasks to share a time budget."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (rows, cols) in enumerate(zip(widths, widths[1:], strict=False)):
        inits.append(numpy_helper.from_array((rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32),
                                             f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Tanh", [x], [f"a{i}"], name=f"act{i}"))
            x = f"a{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, widths[-1]])], inits)
    return _save(graph, path)


def sensitive_mlp(path: Path, width: int = 64, layers: int = 4, sensitive: int = 2, seed: int = 0,
                  restored: bool = False) -> Path:
    """An MLP whose layer `sensitive` (node `mm{sensitive}`) reads an activation with one huge component:
    per-tensor int8 of that activation rounds every other component away, so quantizing that one node ruins
    the output while quantizing any other costs nothing. Input x float32 [1, width]; output y [1, width].
    `restored`: the outlier is subtracted again (node `unspike{i}`) before the matmul, so only an int8 copy of
    the elementwise value between them (what QDQ of every operator makes) is ruined, not the matmul's input."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x = "x"
    for i in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        if i == sensitive:  # add an outlier the weights then ignore: it only spoils the activation's int8 scale
            outlier = np.zeros(width, np.float32)
            outlier[0] = 1000.0
            inits.append(numpy_helper.from_array(outlier, f"outlier{i}"))
            nodes.append(helper.make_node("Add", [x, f"outlier{i}"], [f"spiked{i}"], name=f"spike{i}"))
            if restored:
                nodes.append(helper.make_node("Sub", [f"spiked{i}", f"outlier{i}"], [f"back{i}"], name=f"unspike{i}"))
                x = f"back{i}"
            else:
                x, weight[0, :] = f"spiked{i}", 0.0
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        out = "y" if i == layers - 1 else f"a{i}"
        nodes.append(helper.make_node("Tanh", [f"h{i}"], [out], name=f"act{i}"))
        x = out
    graph = helper.make_graph(nodes, "sensitive_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], inits)
    return _save(graph, path)


def lcnet_blocks(path: Path, width: int | str = "width", opset: int = 12) -> Path:
    """Two PP-LCNet blocks as Paddle2ONNX writes them: each convolution followed by a learnable affine
    (Mul, Add), a HardSwish written out (x * Clip(x + 3, 0, 6) / 6, then x * (Clip(...) * (1/6))), and another
    affine before the next convolution; a padded depthwise convolution last. x[1, 3, 8, width] -> y[1, 16, 8, width]."""
    rng = np.random.default_rng(0)
    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr, np.float32), name)  # noqa: E731
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("Mul", ["c1", "s1"], ["m1"], name="scale1"), n("Add", ["m1", "t1"], ["a1"], name="shift1"),
        n("Add", ["a1", "three"], ["h1"], name="hs1_add"), n("Clip", ["h1", "zero", "six"], ["h1c"], name="hs1_clip"),
        n("Mul", ["a1", "h1c"], ["h1m"], name="hs1_mul"), n("Div", ["h1m", "six"], ["hs1"], name="hs1_div"),
        n("Mul", ["hs1", "s2"], ["m2"], name="scale2"), n("Add", ["m2", "t2"], ["a2"], name="shift2"),
        n("Conv", ["a2", "w2", "b2"], ["c2"], name="pointwise"),
        n("Mul", ["c2", "s3"], ["m3"], name="scale3"), n("Add", ["t3", "m3"], ["a3"], name="shift3"),
        n("Add", ["three", "a3"], ["h2"], name="hs2_add"), n("Clip", ["h2", "zero", "six"], ["h2c"], name="hs2_clip"),
        n("Mul", ["h2c", "sixth"], ["h2d"], name="hs2_scale"), n("Mul", ["a3", "h2d"], ["hs2"], name="hs2_mul"),
        n("Mul", ["hs2", "s4"], ["m4"], name="scale4"), n("Add", ["m4", "t4"], ["a4"], name="shift4"),
        n("Conv", ["a4", "w3", "b3"], ["c3"], name="depthwise", pads=[1, 1, 1, 1], group=16),
        n("Relu", ["c3"], ["y"], name="relu"),
    ]
    inits = [c("w1", rng.standard_normal((8, 3, 3, 3)) * 0.4), c("b1", rng.standard_normal(8) * 0.1),
             c("s1", 1.3), c("t1", -0.2), c("s2", 0.8), c("t2", 0.5),
             c("w2", rng.standard_normal((16, 8, 1, 1)) * 0.4), c("b2", rng.standard_normal(16) * 0.1),
             c("s3", rng.uniform(0.5, 1.5, (16, 1, 1))), c("t3", rng.standard_normal((1, 16, 1, 1)) * 0.3),
             c("s4", 1.1), c("t4", 0.7), c("w3", rng.standard_normal((16, 1, 3, 3)) * 0.4), c("b3", np.zeros(16)),
             c("three", 3.0), c("zero", 0.0), c("six", 6.0), c("sixth", 1 / 6)]
    graph = helper.make_graph(
        nodes, "lcnet_blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, width])], inits)
    return _save(graph, path, opset=opset)


def width_mean(path: Path) -> Path:
    """x[1, 4, width] -> x - mean(x over the width): every output reads every position, so padding the width
    changes all of them (what attention along a text line's width does)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2], keepdims=1),
         helper.make_node("Sub", ["x", "m"], ["y"])],
        "width_mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "width"])])
    return _save(graph, path, opset=13)
