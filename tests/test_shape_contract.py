"""The shape contract: axes are typed (`Axis`), read and written as "name:index" by kiln/artifact/specs.py alone
(manifests made before keep loading), the batch and the pad values live on the Dim, and one rule cuts padded
outputs back, in the bucket runner and in the batcher alike: exactly the profile's output axes of the padded
dimension. An axis the profile does not relate to it is never cut, whatever its size. A data sample whose inputs
disagree on a shared length is refused by name."""

import asyncio
import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.artifact.manifest import Manifest
from kiln.artifact.specs import Axis, Dim, Profile, TensorSpec
from kiln.errors import KilnError
from kiln.optimize.inspect import dynamic_dims, input_specs, load_model, output_axes, output_specs
from kiln.optimize.profile import resolve
from kiln.runtime.buckets import BucketRunner
from kiln.runtime.runners import OrtRunner
from kiln.serving.batching import Batcher, BatchingConfig

import onnx_models
from conftest import run_kiln

WIDTH = 16  # the hidden width; a bucket of the same value must not cut it


def pooled_model(path: Path, named_scores: bool = True) -> Path:
    """x float [batch, seq] -> hidden [batch, seq, WIDTH] (x times a weight row), pooled [batch, WIDTH] (the sum
    over seq: padding x with zeros leaves it unchanged), scores [batch, seq] (the sum over WIDTH), whose seq axis
    is named like the input's, or left unnamed (`named_scores=False`): a length the profile cannot relate."""
    weight = np.arange(1, WIDTH + 1, dtype=np.float32).reshape(1, 1, WIDTH)
    nodes = [helper.make_node("Unsqueeze", ["x", "two"], ["x3"]),
             helper.make_node("Mul", ["x3", "w"], ["hidden"]),
             helper.make_node("ReduceSum", ["hidden", "one"], ["pooled"], keepdims=0),
             helper.make_node("ReduceSum", ["hidden", "two"], ["scores"], keepdims=0)]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([2]), "two"),
             numpy_helper.from_array(np.array([1]), "one")]
    graph = helper.make_graph(
        nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", WIDTH]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", WIDTH]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "seq" if named_scores else None])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def contract(path: Path, declared: dict[str, tuple[int, int]], padding: dict[str, float]) -> tuple[Profile, list]:
    """The profile and output specs kiln's validation derives from the model (the same functions)."""
    model = load_model(path)
    specs = input_specs(model, {}, str(path))
    profile = resolve(specs, dynamic_dims(model, specs), declared, None, str(path))
    named = output_axes(model)
    profile = Profile(dims=[d.model_copy(update={"outputs": named.get(d.name, [])}) for d in profile.dims])
    return profile.with_padding(padding), output_specs(model)


def test_axes_are_typed_and_old_manifests_still_load(tmp_path):
    """A manifest of an earlier kiln holds "input:axis" strings and no batch or pad values on its dims: it loads
    typed, the batch decided by the one rule and the program's pad values moved onto the varying dimension;
    written again, the axes keep their string form. A tensor name with a colon (tf2onnx's "x:0") survives."""
    old = {"name": "seq", "low": 1, "high": 64, "axes": ["input_ids:1", "attention_mask:1"],
           "outputs": ["last_hidden_state:1"], "source": "data"}
    batch = {"name": "batch", "low": 1, "high": 8, "axes": ["input_ids:0", "attention_mask:0"], "source": "declared"}
    manifest = Manifest.model_validate({
        "name": "m", "created_at": "2026-01-01T00:00:00", "target": "llvm", "dataset": "d", "candidates": [],
        "selected": "onnxruntime", "backend": "onnxruntime", "speedup_vs_baseline": 1.0,
        "model": {"path": "model.onnx", "sha256": "0", "source_sha256": "0"},
        "program": {"sha256": "0", "source": "p", "padding": {"input_ids": 0, "attention_mask": 0}},
        "inputs": [{"name": n, "dtype": "int64", "shape": [-1, -1]} for n in ("input_ids", "attention_mask")],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": [-1, -1, 4]}],
        "profile": {"dims": [batch, old]}})
    profile = manifest.profile
    assert profile.axis(Axis("attention_mask", 1)).name == "seq" and profile.axis("input_ids", 0).name == "batch"
    assert profile.batch.name == "batch" and not profile.dim("seq").batch
    assert profile.dim("seq").padding == {"input_ids": 0.0, "attention_mask": 0.0}
    assert profile.dim("batch").padding == {}  # rows are never padded
    written = json.loads(manifest.to_json())["profile"]["dims"]
    assert written[1]["axes"] == old["axes"] and written[1]["outputs"] == old["outputs"]
    assert Manifest.model_validate_json(manifest.to_json()).profile == profile
    assert Dim(name="n", low=1, high=2, axes=["x:0:1"]).axes == [Axis("x:0", 1)]
    assert json.loads(Dim(name="n", low=1, high=2, axes=[Axis("x:0", 1)]).model_dump_json())["axes"] == ["x:0:1"]


def test_bucket_runner_never_cuts_an_axis_the_profile_does_not_name(tmp_path):
    """Through the bucket runner (real onnxruntime sessions standing in for each bucket's build), the outputs
    at every length equal the unpadded model's: the hidden width, as long as the bucket (16), is left whole on
    the pooled output the profile names no axis of; the sequence axes it names are cut back."""
    model = pooled_model(tmp_path / "m.onnx")
    profile, _ = contract(model, {"seq": (1, 32)}, {})
    seq = profile.dim("seq")
    assert seq.outputs == [Axis("hidden", 1), Axis("scores", 1)] and not seq.batch
    specs = [TensorSpec(name="x", dtype="float32", shape=[1, -1])]
    runner = BucketRunner(tmp_path, seq, [WIDTH, 32], specs, load=lambda module, specs: OrtRunner(model))
    alone = OrtRunner(model)
    rng = np.random.default_rng(0)
    for length in (3, 11, WIDTH - 1, WIDTH, 20, 32):
        feed = {"x": rng.standard_normal((1, length)).astype(np.float32)}
        want, got = alone.run(feed), runner.run(feed)
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}, length
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    assert got["pooled"].shape == (1, WIDTH)


def batched(model: Path, profile: Profile, outputs: list[TensorSpec], feeds: list[dict]) -> tuple[list, list]:
    """Each feed's outputs through the batcher (all submitted at once), and the (requests, rows) of each call."""
    runner = OrtRunner(model)
    manifest = Manifest.model_construct(profile=profile, outputs=outputs, name="m")
    calls: list[tuple[int, int]] = []

    async def scenario() -> list:
        batcher = Batcher(manifest, profile.batch, runner.run, instances=1,
                          config=BatchingConfig(max_batch=8, max_queue_delay_us=50_000),
                          on_batch=lambda requests, rows, ns: calls.append((requests, rows)))
        return [d.outputs for d in await asyncio.gather(*(batcher.submit(f) for f in feeds))]

    return asyncio.run(scenario()), calls


def test_batcher_pads_and_cuts_exactly_the_named_output_axes(tmp_path):
    """Requests of three lengths share one padded call and each caller gets what its request alone gives:
    the sequence axes the profile names cut back, the hidden width (as long as some requests) left whole."""
    model = pooled_model(tmp_path / "m.onnx")
    profile, outputs = contract(model, {"batch": (1, 8), "seq": (1, 32)}, {"x": 0})
    assert profile.batch.name == "batch" and profile.dim("seq").pads
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, n)).astype(np.float32)} for n in (5, WIDTH, 9)]
    got, calls = batched(model, profile, outputs, feeds)
    assert calls == [(3, 3)], calls  # padded together: one call
    for feed, out in zip(feeds, got, strict=True):
        want = OrtRunner(model).run(feed)
        assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in want.items()}
        for name in want:
            np.testing.assert_allclose(out[name], want[name], rtol=1e-5, atol=1e-5)


def test_batcher_does_not_pad_when_an_output_length_is_unrelated(tmp_path):
    """The model leaves the sequence axis of `scores` unnamed: padding would lengthen it and nothing could say
    how far to cut it back, so requests of other lengths do not share a call, and every caller still gets
    exactly its own outputs (padded together, the shorter callers would get the longest's scores length)."""
    model = pooled_model(tmp_path / "m.onnx", named_scores=False)
    profile, outputs = contract(model, {"batch": (1, 8), "seq": (1, 32)}, {"x": 0})
    assert profile.unrelated(outputs) == [Axis("scores", 1)]
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, n)).astype(np.float32)} for n in (5, 9, 5)]
    got, calls = batched(model, profile, outputs, feeds)
    assert sorted(calls) == [(1, 1), (2, 2)], calls  # the two of length 5 together, the 9 alone
    for feed, out in zip(feeds, got, strict=True):
        want = OrtRunner(model).run(feed)
        assert out["scores"].shape == want["scores"].shape == (1, feed["x"].shape[1])
        np.testing.assert_allclose(out["scores"], want["scores"], rtol=1e-5, atol=1e-5)


def test_a_sample_whose_inputs_disagree_on_a_length_is_refused(tmp_path, kiln_env):
    """input_ids of 7 tokens with an attention_mask of 9 in one sample: the run stops (exit 2, no traceback)
    naming the sample, the dimension and both inputs, from a parquet file and from an npz file."""
    model = onnx_models.tiny_bert(tmp_path / "bert.onnx", seq=64)
    rows = [{"input_ids": [5] * n, "attention_mask": [1] * n, "token_type_ids": [0] * n} for n in (4, 6, 7, 3)]
    rows[2]["attention_mask"] = [1] * 9
    parquet = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    npz = tmp_path / "rows.npz"
    np.savez(npz, input_ids=np.ones((3, 7), np.int64), attention_mask=np.ones((3, 9), np.int64),
             token_type_ids=np.zeros((3, 7), np.int64))
    for data, sample in ((parquet, 2), (npz, 0)):
        proc = run_kiln(["optimize", str(model), "--data", str(data), "--candidates", "onnxruntime", "--trials", "0"],
                        kiln_env)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "Traceback" not in output, output
        assert (f"sample {sample} has sequence = 7 in input 'input_ids' (axis 1) but 9 in input 'attention_mask' "
                "(axis 1)") in output, output


def test_batching_refuses_an_output_led_by_another_dimension():
    """An output [sequence, batch] has a dynamic first axis, but it is the sequence's: cutting each caller's rows
    there would hand callers each other's data, so batching is refused naming the output."""
    batch = Dim(name="batch", low=1, high=4, axes=["x:0"], outputs=["y:1", "z:0"], batch=True)
    seq = Dim(name="seq", low=1, high=8, axes=["x:1"], outputs=["y:0", "z:1"])
    outputs = [TensorSpec(name="y", dtype="float32", shape=[-1, -1]),
               TensorSpec(name="z", dtype="float32", shape=[-1, -1])]
    manifest = Manifest.model_construct(profile=Profile(dims=[batch, seq]), outputs=outputs, name="m")
    with pytest.raises(KilnError, match=r"lead with the batch axis; \['y'\] do not"):
        BatchingConfig(max_queue_delay_us=1000).checked(manifest, batch)
    led = [outputs[1]]  # z alone leads with the batch: batching is allowed
    assert BatchingConfig(max_queue_delay_us=1000).checked(
        Manifest.model_construct(profile=Profile(dims=[batch, seq]), outputs=led, name="m"), batch).max_batch == 4
