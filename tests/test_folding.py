"""kiln's exact graph folds (kiln.optimize.folding) and the `ort-fp32-folded` candidate they build."""

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_models
from conftest import run_kiln


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _optimized_ops(model: onnx.ModelProto, dest) -> Counter:
    """The operators of the graph onnxruntime runs (level ALL: its blocked NCHWc convolutions and reorders)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(dest)
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(dest)).graph.node)


def test_mobile_blocks_fold_into_their_convolutions_with_the_same_outputs(tmp_path):
    """PP-LCNet's blocks as exported: every affine beside a convolution goes into it, both written-out HardSwish
    forms become the operator, and the affine before the padded depthwise convolution (folding it would change
    the border the padding reads) becomes one BatchNormalization, which onnxruntime runs in its blocked layout:
    no Mul or Add and one reorder pair fewer in the graph it optimizes. Outputs equal the original's at two
    widths."""
    from kiln.optimize import folding
    from kiln.optimize.candidates.ort_int8_static import at_least_opset
    from kiln.optimize.folding import fold

    path = onnx_models.lcnet_blocks(tmp_path / "blocks.onnx", opset=14)
    folded, stats = fold(onnx.load(str(path)))
    onnx.checker.check_model(folded)
    assert stats == {"conv-output-affine": 2, "hard-swish": 2, "conv-input-affine": 1, "affine-batchnorm": 1}
    ops = Counter(n.op_type for n in folded.graph.node)
    assert ops == {"Conv": 3, "HardSwish": 2, "BatchNormalization": 1, "Relu": 1}, ops
    assert [n.name for n in folded.graph.node if n.op_type == "BatchNormalization"] == ["scale4"]
    without = onnx.load(str(path))  # the same folds but the last: the affine stays Mul, Add
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(folding, "PIPELINE", folding.PIPELINE[:-1])
        without, _ = fold(without)
    optimized = {name: _optimized_ops(model, tmp_path / f"{name}.onnx")
                 for name, model in (("folded", folded), ("without", without))}
    assert not {"Mul", "Add", "BatchNormalization"} & set(optimized["folded"]), optimized
    assert optimized["folded"]["ReorderOutput"] < optimized["without"]["ReorderOutput"], optimized
    for width in (5, 17):
        x = np.random.default_rng(width).standard_normal((1, 3, 8, width)).astype(np.float32) * 3
        want = _run(str(path), x)
        np.testing.assert_allclose(_run(folded, x), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # below opset 14 there is no HardSwish: the other folds still apply, the written-out form stays
    old = onnx.load(str(onnx_models.lcnet_blocks(tmp_path / "old.onnx", opset=12)))
    assert fold(old)[1]["hard-swish"] == 0
    assert fold(at_least_opset(old, 14))[1]["hard-swish"] == 2


def test_an_affine_after_an_activation_becomes_one_batchnorm():
    """Mul by a per-channel constant, Sub and Div by scalars, between a convolution's Relu and a padded
    convolution: one BatchNormalization with that scale per channel, the same outputs at two widths."""
    from kiln.optimize.folding import fold

    rng = np.random.default_rng(1)
    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr, np.float32), name)  # noqa: E731
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
             n("Mul", ["gain", "r1"], ["m1"]), n("Sub", ["m1", "shift"], ["s1"]), n("Div", ["s1", "four"], ["d1"]),
             n("Conv", ["d1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], group=4)]
    graph = helper.make_graph(
        nodes, "affine_after_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, "width"])],
        [c("w1", rng.standard_normal((4, 2, 3, 3))), c("b1", rng.standard_normal(4)),
         c("gain", rng.uniform(0.5, 2, (4, 1, 1))), c("shift", 0.3), c("four", 4.0),
         c("w2", rng.standard_normal((4, 1, 3, 3))), c("b2", rng.standard_normal(4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    folded, stats = fold(model)
    assert stats["affine-batchnorm"] == 1 and stats["conv-input-affine"] == 0, stats
    assert [x.op_type for x in folded.graph.node] == ["Conv", "Relu", "BatchNormalization", "Conv"]
    scale = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}[folded.graph.node[2].input[1]]
    np.testing.assert_allclose(scale, numpy_helper.to_array(graph.initializer[2]).reshape(4) / 4, rtol=1e-6)
    for width in (3, 11):
        x = rng.standard_normal((1, 2, 6, width)).astype(np.float32)
        want = _run(model, x)
        np.testing.assert_allclose(_run(folded, x), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_what_is_not_an_exact_fold_stays():
    """A convolution's output read twice, a constant that varies along the width, c - x (not x - c), a clip
    that is not (0, 6), and a constant the caller may override are left as they are."""
    from kiln.optimize.folding import fold

    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr, np.float32), name)  # noqa: E731
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c1"], name="read_twice"), n("Mul", ["c1", "two"], ["m1"]),
             n("Relu", ["c1"], ["r1"]), n("Add", ["m1", "r1"], ["s1"]),
             n("Conv", ["s1", "w", "b"], ["c2"], name="by_width"), n("Mul", ["c2", "ramp"], ["m2"]),
             n("Sub", ["two", "m2"], ["d2"]), n("Conv", ["d2", "w", "b"], ["c3"], name="after_c_minus_x"),
             n("Relu", ["c3"], ["r3"]),
             n("Add", ["r3", "three"], ["h"]), n("Clip", ["h", "zero", "two"], ["hc"]), n("Mul", ["r3", "hc"], ["hm"]),
             n("Div", ["hm", "six"], ["y"])]
    graph = helper.make_graph(
        nodes, "not_foldable", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 4])],
        [c("w", np.eye(2).reshape(2, 2, 1, 1)), c("b", [0.1, -0.1]), c("two", 2.0), c("three", 3.0),
         c("zero", 0.0), c("six", 6.0), c("ramp", np.arange(4).reshape(1, 1, 1, 4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    before = [(n.op_type, list(n.input)) for n in model.graph.node]
    folded, stats = fold(onnx.load_from_string(model.SerializeToString()))
    assert not any(stats.values()), stats
    assert [(n.op_type, list(n.input)) for n in folded.graph.node] == before
    # an initializer that is also a graph input is a default the caller may feed: not a constant to fold
    gain = helper.make_graph(
        [n("Conv", ["x", "w", "b"], ["c"]), n("Mul", ["c", "gain"], ["y"])], "overridable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4]),
         helper.make_tensor_value_info("gain", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 4])],
        [c("w", np.eye(2).reshape(2, 2, 1, 1)), c("b", [0.1, -0.1]), c("gain", 2.0)])
    assert fold(helper.make_model(gain, opset_imports=[helper.make_opsetid("", 14)]))[1]["conv-output-affine"] == 0


def test_the_folded_candidate_in_the_flow(kiln_env, tmp_path):
    """`ort-fp32-folded` on an opset-12 export (HardSwish needs 14: the builder converts it) at widths that vary:
    built, judged by the ranges like any candidate, its folds listed in its settings; a model with nothing to
    fold is skipped with that reason."""
    from kiln.optimize import candidates

    model = onnx_models.lcnet_blocks(tmp_path / "blocks.onnx")
    rng = np.random.default_rng(0)
    for i, width in enumerate([7, 12, 16] * 6):
        np.savez(tmp_path / f"line{i:02d}.npz", x=rng.standard_normal((1, 3, 8, width)).astype(np.float32))
    data = tmp_path / "lines"
    data.mkdir()
    for f in tmp_path.glob("line*.npz"):
        f.rename(data / f.name)
    proc = run_kiln(["optimize", str(model), "--data", str(data), "--range", "cosine>=0.9999",
                     "--candidates", "onnxruntime,ort-fp32-folded", "--trials", "0", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    row = {c["name"]: c for c in json.loads(proc.stdout)["candidates"]}["ort-fp32-folded"]
    assert row["passed"] and row["metrics"]["cosine"]["value"] > 0.9999, row
    assert row["settings"]["fusion"] == ("folded: 2 conv-output-affine, 2 hard-swish, 1 conv-input-affine, "
                                         "1 affine-batchnorm")

    cnn = onnx_models.small_cnn(tmp_path / "cnn.onnx")
    with pytest.raises(candidates.Skipped, match="nothing to fold"):
        candidates.get("ort-fp32-folded").build(candidates.BuildContext(model=cnn, prepared=cnn, out_dir=tmp_path))
