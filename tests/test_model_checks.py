"""ONNX checks and preparation: unreadable models, unsupported ops, dynamic dims, guards, folding."""


import numpy as np
import onnxruntime as ort
import pytest

from kiln.artifact.specs import Axis, TensorSpec, check_index_ranges
from kiln.compiler import import_onnx, supported_ops
from kiln.errors import DatasetError, InputError, ModelError
from kiln.optimize.inspect import dynamic_dims, index_guards, input_specs, load_model, unsupported_ops
from kiln.optimize.prepare import fix_input_shapes, infer_shapes, prepare_model
from kiln.optimize.profile import resolve
from kiln.program.datasets import Dataset

import onnx_models


def test_not_onnx(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(p)


def test_truncated_onnx(tmp_path):
    full = onnx_models.embedding(tmp_path / "full.onnx").read_bytes()
    p = tmp_path / "model.onnx"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(ModelError, match="not an ONNX model|checker"):
        load_model(p)


def test_checker_failure(tmp_path):
    with pytest.raises(ModelError, match="checker rejects the model.*ghost"):
        load_model(onnx_models.checker_failure(tmp_path / "m.onnx"))


def test_unsupported_ops_are_listed_with_nodes(tmp_path):
    model = load_model(onnx_models.lstm(tmp_path / "m.onnx"))
    assert unsupported_ops(model, supported_ops()) == {"LSTM": ["encoder_lstm"]}


def test_dynamic_dims_get_a_profile(tmp_path):
    """An open batch axis is a dimension of the profile (batch 1 unless declared); a declared shape fixes it."""
    model = load_model(onnx_models.runtime_shapes(tmp_path / "m.onnx"))
    specs = input_specs(model, {}, "m.onnx")
    assert specs[0].shape == [-1, 3, 8, 8] and dynamic_dims(model, specs) == {"batch": [Axis("x", 0)]}
    assert resolve(specs, dynamic_dims(model, specs), {}, None, "m.onnx").explain() == "batch 1 (batch default)"
    assert resolve(specs, dynamic_dims(model, specs), {"x:0": (1, 4)}, None, "m.onnx").describe() == "batch 1..4"
    with pytest.raises(ModelError, match="does not fit"):
        input_specs(model, {"x": [1, 4, 8, 8]}, "m.onnx")
    assert input_specs(model, {"x": [2, 3, 8, 8]}, "m.onnx")[0].shape == [2, 3, 8, 8]


def test_prepare_turns_an_import_failure_into_a_matching_model(tmp_path):
    src = onnx_models.runtime_shapes(tmp_path / "m.onnx")
    model = load_model(src)
    specs = input_specs(model, {"x": [1, 3, 8, 8]}, "m")
    with pytest.raises(ModelError, match="Dynamic pads are not supported"):
        import_onnx(src, specs)
    out = tmp_path / "prepared.onnx"
    prepare_model(model, specs, out, "m")
    import_onnx(out, specs)  # no longer raises
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    a = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_control_flow_keeps_running_after_its_shapes_are_fixed(tmp_path, caplog):
    """An If whose untaken branch does not type-check at the declared shape (onnxruntime refuses the model once
    its input says B = 1): the prepared model keeps the model's own input declaration, says why, and gives the
    original's outputs."""
    import logging

    src = onnx_models.if_lstm(tmp_path / "if_lstm.onnx")
    model = load_model(src)
    specs = input_specs(model, {"x": [5, 1, 8]}, "m")
    with pytest.raises(Exception, match="must have rank 3"):  # what kiln's rewrite alone would cause
        ort.InferenceSession(fix_input_shapes(model, specs).SerializeToString())
    caplog.set_level(logging.WARNING, logger="kiln.optimize")
    out = tmp_path / "prepared.onnx"
    prepare_model(model, specs, out, "m")
    assert any("keep their own declarations" in r.getMessage() and "x 5x1x8" in r.getMessage()
               for r in caplog.records), caplog.text
    x = np.random.default_rng(0).standard_normal((5, 1, 8)).astype(np.float32)
    np.testing.assert_allclose(ort.InferenceSession(str(out)).run(None, {"x": x})[0],
                               ort.InferenceSession(str(src)).run(None, {"x": x})[0], rtol=1e-6)



def test_a_model_with_control_flow_is_optimized_at_fixed_shapes(kiln_env, tmp_path):
    """The CLI on the If-with-LSTM model at --shape x=5x1x8: onnxruntime runs it and is published; TVM, which
    has no If or LSTM, says so instead of the run failing."""
    import json

    from conftest import run_kiln

    src = onnx_models.if_lstm(tmp_path / "if_lstm.onnx")
    proc = run_kiln(["optimize", str(src), "--shape", "x=5x1x8", "--candidates", "onnxruntime,tvm", "--trials", "0",
                     "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["selected"] == "onnxruntime"
    tvm = next(c for c in result["candidates"] if c["name"] == "tvm")
    assert any("If" in r and "LSTM" in r for r in tvm["reasons"]), tvm["reasons"]


def test_prepare_leaves_matmul_add_for_tvm_to_fuse(tmp_path):
    """onnxruntime's basic level would turn each MatMul+Add into a 2-D Gemm wrapped in Reshapes, and TVM could
    then not fuse a transformer's GELU into the matmul before it (on MiniLM-L6 a 1.97 ms kernel per layer)."""
    import tvm

    from kiln.compiler import pipelines, target_config

    ids = ("input_ids", "attention_mask", "token_type_ids")
    src = onnx_models.tiny_bert(tmp_path / "bert.onnx")
    model = load_model(src)
    specs = input_specs(model, {n: [1, 16] for n in ids}, "bert")
    prepared = prepare_model(model, specs, tmp_path / "prepared.onnx", "bert")
    assert "Gemm" not in {n.op_type for n in prepared.graph.node}
    with tvm.target.Target(target_config("llvm")):
        lowered = pipelines.lowering()(import_onnx(tmp_path / "prepared.onnx", specs))
    kernels = [gv.name_hint for gv in lowered.get_global_vars()]
    assert any("matmul" in k and "erf" in k for k in kernels), kernels


def test_index_guards_found_and_enforced(tmp_path):
    model = load_model(onnx_models.embedding(tmp_path / "m.onnx", vocab=50))
    specs = input_specs(model, {}, "m")
    guards = index_guards(infer_shapes(fix_input_shapes(model, specs), "m"))
    assert [(g.input, g.low, g.high, g.node) for g in guards] == [("ids", -50, 50, "embed")]
    check_index_ranges({"ids": np.array([[0, 49, -50, 3, 4, 5]])}, guards, "request")
    with pytest.raises(InputError, match=r"'ids' holds 50 at index \[0, 1\].*\[-50, 50\)"):
        check_index_ranges({"ids": np.array([[0, 50, 1, 2, 3, 4]])}, guards, "request")


def test_datasets_in_every_format(tmp_path):
    spec = [TensorSpec(name="x", dtype="float32", shape=[1, 3])]
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(tmp_path / "d.npz", feats=x, y=np.arange(4))
    s = Dataset(path="d.npz", inputs={"x": "feats"}).load(tmp_path, spec)
    assert s.inputs["x"].dtype == np.float32 and s.labels.tolist() == [0, 1, 2, 3]
    import pandas as pd

    frame = pd.DataFrame(x, columns=["f0", "f1", "f2"]).assign(label=[3, 2, 1, 0])
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        s = Dataset(path=name, inputs={"x": "f*"}, labels="label").load(tmp_path, spec)
        np.testing.assert_array_equal(s.inputs["x"], x.astype(np.float32))
        assert s.labels.tolist() == [3, 2, 1, 0]
    s = Dataset(loader=lambda: {"x": x, "labels": np.zeros(4)}).load(tmp_path, spec)
    assert s.count == 4


def test_dataset_mismatches_are_explained(tmp_path):
    spec = [TensorSpec(name="x", dtype="float32", shape=[1, 3])]
    np.savez(tmp_path / "wrong_shape.npz", x=np.zeros((4, 5), np.float32))
    with pytest.raises(DatasetError, match=r"shape \[4, 5\].*expected whole tensors \[N, 1, 3\] or rows \[M, 3\]"):
        Dataset(path="wrong_shape.npz").load(tmp_path, spec)
    np.savez(tmp_path / "wrong_dtype.npz", x=np.array([["a", "b", "c"]]))
    with pytest.raises(DatasetError, match="dtype <U1, the model expects float32"):
        Dataset(path="wrong_dtype.npz").load(tmp_path, spec)
    with pytest.raises(DatasetError, match="no array 'nope'"):
        Dataset(path="wrong_dtype.npz", inputs={"x": "nope"}).load(tmp_path, spec)
    with pytest.raises(DatasetError, match="file not found"):
        Dataset(path="missing.npz").load(tmp_path, spec)
    int_spec = [TensorSpec(name="x", dtype="int64", shape=[1, 3])]
    np.savez(tmp_path / "floats.npz", x=np.zeros((2, 3), np.float32))
    with pytest.raises(DatasetError, match="float32, the model expects int64"):
        Dataset(path="floats.npz").load(tmp_path, int_spec)


def test_runtime_import_does_not_leak_into_tuning_workers():
    """Loading a TVM module in a flow process must not make later MetaSchedule workers runtime-only."""
    import os
    import subprocess
    import sys

    script = ("import os, tvm\nfrom kiln.runtime.runners import _import_tvm_runtime\n_import_tvm_runtime()\n"
              "assert 'TVM_USE_RUNTIME_LIB' not in os.environ, 'leaked'\nprint('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
