"""Dynamic profiles where they cannot work, and where they are served: TVM's per-bucket builds refuse a profile
that varies two dimensions or the batch (the candidate's row says why); `kiln serve` refuses dynamic batching
that a model cannot do (no dynamic batch, --max-batch outside the batch range, an output not led by the batch)
with the reason and no traceback; a batch whose model call raises fails each of its callers and the batcher goes
on; the v2 REST routes show dynamic dimensions as -1 and refuse a length outside the profile."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper

import kiln

import onnx_models
from conftest import Served, run_kiln


@pytest.fixture(scope="module")
def env(prefect_server, kiln_home, tmp_path_factory) -> dict[str, str]:
    """kiln_env for the module: the artifacts below are shared by its tests."""
    return {**os.environ, "KILN_HOME": str(kiln_home), "KILN_STORE": str(tmp_path_factory.mktemp("dyn-store")),
            "PREFECT_API_URL": prefect_server, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(kiln_home / "prefect"), "PYTHONUNBUFFERED": "1"}


def optimized(model: Path, name: str, dims: list[str], env: dict[str, str]) -> tuple[Path, dict]:
    """(artifact, manifest) of `model` optimized on synthetic inputs over `dims`; tvm is asked for and refused
    before it compiles anything, onnxruntime ships."""
    proc = run_kiln(["optimize", str(model), *(a for d in dims for a in ("--dim", d)), "--name", name,
                     "--candidates", "onnxruntime,tvm", "--trials", "0", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["selected"] == "onnxruntime", manifest["candidates"]
    return Path(env["KILN_STORE"]) / name / manifest["id"], manifest


@pytest.fixture(scope="module")
def bert(env, tmp_path_factory) -> tuple[Path, dict]:
    """A BERT-shaped model optimized for batch 1..4 and sequence 4..48: two dimensions vary."""
    model = onnx_models.tiny_bert(tmp_path_factory.mktemp("bert") / "bert.onnx", seq=64)
    return optimized(model, "dyn-serve", ["batch=1..4", "sequence=4..48"], env)


def batch_last_model(path: Path) -> Path:
    """x[batch, 4] -> y = Relu(x) [batch, 4] and t = Transpose(x) [4, batch]: t does not lead with the batch."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0])],
        "batch_last", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, "batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def batch_last(env, tmp_path_factory) -> tuple[Path, dict]:
    """A model optimized for batch 1..4, the only dimension that varies, with an output led by a fixed axis."""
    model = batch_last_model(tmp_path_factory.mktemp("batch-last") / "batch_last.onnx")
    return optimized(model, "batch-last", ["batch=1..4"], env)


def tvm_row(manifest: dict) -> dict:
    return next(c for c in manifest["candidates"] if c["name"] == "tvm")


# -- TVM's per-bucket builds ------------------------------------------------------------------------------------

def test_tvm_refuses_a_varying_batch_beside_a_varying_length(bert):
    """Two dimensions vary, one of them the batch: TVM's buckets (a grid of two lengths at most) do not vary a
    batch, and the reason names it."""
    _, manifest = bert
    assert [(d["name"], d["low"], d["high"]) for d in manifest["profile"]["dims"]] == \
        [("batch", 1, 4), ("sequence", 4, 48)]
    tvm = tvm_row(manifest)
    assert not tvm["passed"] and tvm["latency_ms"] is None and not tvm["metrics"], tvm
    assert len(tvm["reasons"]) == 1 and tvm["reasons"][0].startswith("skipped: "), tvm["reasons"]
    assert "a length, not the batch (batch 1..4)" in tvm["reasons"][0], tvm["reasons"]


def test_tvm_refuses_a_varying_batch(batch_last):
    _, manifest = batch_last
    assert [(d["name"], d["low"], d["high"]) for d in manifest["profile"]["dims"]] == [("batch", 1, 4)]
    tvm = tvm_row(manifest)
    assert not tvm["passed"] and tvm["latency_ms"] is None and not tvm["metrics"], tvm
    assert len(tvm["reasons"]) == 1 and tvm["reasons"][0].startswith("skipped: "), tvm["reasons"]
    assert "a length, not the batch (batch 1..4)" in tvm["reasons"][0], tvm["reasons"]


# -- dynamic batching refused where it cannot work ----------------------------------------------------------------

def refused(artifact: Path, env: dict[str, str], *args: str) -> str:
    """`kiln serve ARTIFACT --max-queue-delay-us 1000 ARGS`: it must stop with exit 2 (the user's mistake) before
    serving; its output."""
    try:
        proc = run_kiln(["serve", str(artifact), "--port", "0", "--http-port", "-1", "--max-queue-delay-us", "1000",
                         *args], env, timeout=120)
    except subprocess.TimeoutExpired as exc:  # it served instead of refusing
        raise AssertionError(f"kiln serve {' '.join(args)} did not refuse: {exc.stdout!r}") from None
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert not proc.stdout.startswith("serving"), output
    return " ".join(output.split())  # rich wraps long lines


def test_batching_refused_without_a_dynamic_batch(digits_artifact, env):
    output = refused(digits_artifact, env)
    assert "error: dynamic batching needs a dynamic batch dimension (the first axis of every input)" in output, output
    assert "hint: optimize it with a batch range" in output, output


def test_batching_refused_with_max_batch_outside_the_batch_range(bert, env):
    artifact, _ = bert
    output = refused(artifact, env, "--max-batch", "5")
    assert "error: --max-batch 5 is outside the batch range 1..4" in output, output
    assert "hint: use a --max-batch from 1 to 4" in output, output


def test_batching_refused_when_an_output_does_not_lead_with_the_batch(batch_last, env):
    artifact, _ = batch_last
    output = refused(artifact, env, "--max-batch", "4")
    assert "error: dynamic batching needs every output to lead with the batch axis; ['t'] do not" in output, output


# -- a batch whose model call raises ------------------------------------------------------------------------------

def test_a_batch_whose_model_call_raises_fails_each_caller_and_the_batcher_goes_on():
    """The batcher around a model call that raises on one batch (the code around the model, unit-tested): every
    request of that batch hears the error, none waits forever, and the next requests are served."""
    import asyncio
    from types import SimpleNamespace

    from kiln.artifact.specs import Dim, Profile
    from kiln.serving.batching import Batcher, BatchingConfig

    batch = Dim(name="batch", low=1, high=8, axes=["x:0"], outputs=["y:0"])
    manifest = SimpleNamespace(profile=Profile(dims=[batch]))
    calls: list[int] = []

    def execute(feed):
        calls.append(len(feed["x"]))
        if (feed["x"] < 0).any():
            raise RuntimeError("the model ran out of memory")
        return {"y": feed["x"] * 2}

    async def scenario():
        batcher = Batcher(manifest, batch, execute, instances=1,
                          config=BatchingConfig(max_batch=3, max_queue_delay_us=200_000))
        bad = [np.full((1, 4), v, np.float32) for v in (1.0, -1.0, 3.0)]  # one poisoned row: the batch fails
        failed = await asyncio.wait_for(asyncio.gather(*(batcher.submit({"x": x}) for x in bad),
                                                       return_exceptions=True), 10)
        good = [np.full((1, 4), v, np.float32) for v in (4.0, 5.0, 6.0)]
        served = await asyncio.wait_for(asyncio.gather(*(batcher.submit({"x": x}) for x in good)), 10)
        return failed, good, served

    failed, good, served = asyncio.run(scenario())
    assert calls == [3, 3], calls  # each three requests shared one call
    assert all(isinstance(f, RuntimeError) and str(f) == "the model ran out of memory" for f in failed), failed
    for x, done in zip(good, served, strict=True):
        np.testing.assert_array_equal(done.outputs["y"], x * 2)


# -- v2 REST over a dynamic profile -------------------------------------------------------------------------------

def rest_inputs(batch: int, length: int) -> list[dict]:
    rng = np.random.default_rng(length)
    feed = {"input_ids": rng.integers(1, 100, (batch, length)), "attention_mask": np.ones((batch, length), np.int64),
            "token_type_ids": np.zeros((batch, length), np.int64)}
    return feed, [{"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
                  for k, v in feed.items()]


def test_v2_rest_shows_dynamic_dimensions_as_minus_one_and_refuses_a_length_outside_the_profile(bert, env):
    """Served with dynamic batching (--max-batch inside the range is accepted): the metadata says -1 where the
    profile varies, a request inside the profile is answered like kiln.load, one outside it is refused with 400
    naming the dimension, the value and the range, and the server keeps serving."""
    artifact, _ = bert
    served = Served(artifact, "--max-queue-delay-us", "1000", "--max-batch", "4", env=env)
    try:
        base = f"http://{served.http}/v2/models/dyn-serve"
        meta = httpx.get(base, timeout=30).json()
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == \
            [(n, "INT64", [-1, -1]) for n in ("input_ids", "attention_mask", "token_type_ids")], meta
        assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("last_hidden_state", [-1, -1, 32])], meta

        feed, inputs = rest_inputs(2, 48)
        reply = httpx.post(f"{base}/infer", json={"inputs": inputs}, timeout=60)
        assert reply.status_code == 200, reply.text
        out = reply.json()["outputs"][0]
        assert out["name"] == "last_hidden_state" and out["shape"] == [2, 48, 32], out["shape"]
        want = kiln.load(artifact).run(feed)["last_hidden_state"]
        np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(2, 48, 32), want, rtol=1e-4, atol=1e-4)

        for batch, length, needle in [
                (1, 49, "has sequence = 49 (axis 1), outside the allowed range 4..48"),
                (1, 3, "has sequence = 3 (axis 1), outside the allowed range 4..48"),
                (5, 8, "has batch = 5 (axis 0), outside the allowed range 1..4")]:
            _, inputs = rest_inputs(batch, length)
            reply = httpx.post(f"{base}/infer", json={"inputs": inputs}, timeout=60)
            assert reply.status_code == 400 and needle in reply.json()["error"], (batch, length, reply.text)
        _, inputs = rest_inputs(1, 4)
        assert httpx.post(f"{base}/infer", json={"inputs": inputs}, timeout=60).status_code == 200
    finally:
        served.stop()
