"""Hopeless candidates stopped early (KILN_HOPELESS_SLOWDOWN): a candidate many times slower than onnxruntime on
its first evaluation inputs, whose judging on every sample would cost more than a few seconds, is stopped there,
its row says so and its accuracy is not measured; the run goes on and publishes without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import onnx_models
from conftest import run_kiln

SAMPLES = 5000  # tiny for onnxruntime, but 4-50 ms each for the slowed copy: judging it on all would take > 5 s


def test_a_hopeless_candidate_is_stopped_before_its_accuracy_is_measured(kiln_env, tmp_path):
    """The version in service is a copy made ~100 dense layers slower on purpose (the same outputs, run without
    graph optimizations: nothing folds the dead work away), measured beside the new candidates as usual: its
    first inputs show it far slower than onnxruntime, so it is stopped there, its row says how much slower and
    that its accuracy was not measured, and onnxruntime ships as v2."""
    model = onnx_models.unary(tmp_path / "relu.onnx", "Relu", shape=(1, 16))
    np.savez(tmp_path / "samples.npz", x=np.random.default_rng(0).standard_normal((SAMPLES, 16)).astype(np.float32))
    args = ["optimize", str(model), "--data", str(tmp_path / "samples.npz"), "--range", "max_abs_diff<=0.001",
            "--candidates", "onnxruntime", "--json"]
    env = {**kiln_env, "KILN_HOPELESS_SLOWDOWN": "10"}  # the default, whatever the caller's environment says
    proc = run_kiln(args, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v1 = json.loads(proc.stdout)
    v1_path = Path(kiln_env["KILN_STORE"]) / "relu" / v1["id"]
    onnx_models.slowed(model, v1_path / "slow.onnx", layers=100)
    v1.update(backend="onnxruntime", model={**v1["model"], "path": "slow.onnx"},
              settings={**v1["settings"], "optimization": "disable"})
    (v1_path / "manifest.json").write_text(json.dumps(v1))  # the manifest is not hashed

    proc = run_kiln(args, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v2 = json.loads(proc.stdout)
    assert v2["version"] == 2 and v2["selected"] == "onnxruntime", v2["candidates"]
    rows = {c["name"]: c for c in v2["candidates"]}
    assert set(rows) == {"onnxruntime", "current"}, list(rows)
    current = rows["current"]
    assert current["settings"]["version"] == 1, current["settings"]
    assert len(current["reasons"]) == 1, current["reasons"]
    reason = current["reasons"][0]
    assert reason.startswith("stopped early: ") and "x slower than onnxruntime on the first 3 inputs" in reason \
        and reason.endswith("its accuracy was not measured"), reason
    assert int(reason.split("stopped early: ")[1].split("x")[0]) >= 10, reason  # the ratio it was stopped at
    assert not current["metrics"] and not current["passed"] and current["latency_ms"] is None, current
    assert rows["onnxruntime"]["metrics"]["max_abs_diff"]["value"] == 0.0 and rows["onnxruntime"]["passed"]
