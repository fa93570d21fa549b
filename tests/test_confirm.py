"""Confirmed speed-ups: the gate's winner is timed again in fresh rounds over several inputs and judged on
held-out samples; what the confirmation does not support is not published, and a winner that fails there loses
its place instead of failing the run.

The end-to-end tests use candidates whose costs are known to differ by a wide margin on any CPU: the user's
model is a chain of 32 linear layers, and the test's own candidate is the same function folded into one matrix
(a real optimization, ~30x less work), so the gate's winner and its confirmation are decided before the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.artifact.manifest import BASELINE, Confirmation, LatencyMs, Manifest, MetricResult, RunSettings
from kiln.artifact.store import ArtifactStore
from kiln.optimize.confirm import verdict
from kiln.optimize.evaluate import spread
from kiln.optimize.noise import speedup

WIDTH, LAYERS, SAMPLES, REPEATS = 256, 32, 40, 20  # 20 calls: 2 in each of the 10 rounds


def _latency(rounds: list[float]) -> LatencyMs:
    return LatencyMs(p50=float(np.median(rounds)), p90=max(rounds), p10=min(rounds), runs=len(rounds), rounds=rounds)


def _confirmation(base: list[float], winner: list[float], held_passed: bool | None = True) -> Confirmation:
    b, w = _latency(base), _latency(winner)
    held = {"cosine": MetricResult(value=0.999 if held_passed else 0.95, range=">= 0.99", passed=bool(held_passed))}
    return Confirmation(inputs=8, latency_ms={"winner": w, "onnxruntime": b}, speedup=speedup(b, w),
                        held_out_samples=12 if held_passed is not None else 0,
                        held_out=held if held_passed is not None else {}, held_out_passed=held_passed)


def test_a_winner_inside_the_noise_is_refused_with_controlled_timings():
    """Rounds where the winner is as fast as the baseline give or take the noise (the selection rounds had it
    ahead: the winner's curse) are refused; a clear win is confirmed; a held-out miss is refused whatever the
    speed, naming the metric."""
    rng = np.random.default_rng(0)
    base = list(10 + rng.normal(0, 0.3, 10))
    same = list(10 + rng.normal(0, 0.3, 10))
    reason = verdict(_confirmation(base, same), "ort-int8-dynamic", min_gain=0.02)
    assert reason and "not confirmed faster than onnxruntime beyond the noise" in reason and "8 inputs" in reason

    barely = [x / 1.01 for x in base]  # 1 % faster in every round: beyond the noise, not by min_gain
    assert "not confirmed" in verdict(_confirmation(base, barely), "w", min_gain=0.02)
    assert verdict(_confirmation(base, [x / 1.5 for x in base]), "w", min_gain=0.02) is None

    missed = verdict(_confirmation(base, [x / 1.5 for x in base], held_passed=False), "w", min_gain=0.02)
    assert missed and "12 held-out samples" in missed and "cosine = 0.95, outside >= 0.99" in missed
    assert verdict(_confirmation(base, [x / 1.5 for x in base], held_passed=None), "w", min_gain=0.02) is None


def test_confirmation_inputs_are_spread_over_the_split():
    assert spread(3, 8) == [0, 1, 2]
    picked = spread(100, 8)
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 99
    assert spread(100, 1) == [0]  # the selection rounds: the first input


def _save(nodes, inits, path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _weights() -> list[np.ndarray]:
    rng = np.random.default_rng(0)  # orthogonal: the chain neither grows nor vanishes
    return [np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))[0].astype(np.float32) for _ in range(LAYERS)]


def chain(path: Path) -> Path:
    """The user's model: y = x W1 W2 ... W32."""
    nodes, inits, x = [], [], "x"
    for i, w in enumerate(_weights()):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == LAYERS - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [out]))
        x = out
    return _save(nodes, inits, path)


def folded(path: Path, trap_samples: set[int] | None = None) -> Path:
    """The same function as one MatMul (~30x less work). With `trap_samples`, it raises on those samples (a
    sample's index is its input's first value): a Gather past the end of a one-element table, the way a
    model that was never run on such inputs fails on them."""
    product = np.linalg.multi_dot([w.astype(np.float64) for w in _weights()]).astype(np.float32)
    inits = [numpy_helper.from_array(product, "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if trap_samples is None else "z"])]
    if trap_samples is not None:
        table = np.array([5 if i in trap_samples else 0 for i in range(SAMPLES)], np.int64)
        inits += [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.zeros(1, np.float32), "one"),
                  numpy_helper.from_array(np.array(0, np.int64), "first")]
        nodes += [helper.make_node("Gather", ["x", "first"], ["x0"], axis=1),
                  helper.make_node("Cast", ["x0"], ["index"], to=TensorProto.INT64),
                  helper.make_node("Gather", ["table", "index"], ["slot"]),
                  helper.make_node("Gather", ["one", "slot"], ["zero"]),  # out of range for a trapped sample
                  helper.make_node("Add", ["z", "zero"], ["y"])]
    return _save(nodes, inits, path)


@pytest.fixture(scope="module")
def stages(tmp_path_factory, kiln_home):
    """The optimize stages as plain functions (what the flow's tasks call) up to the evaluation, on the chain
    model with 40 samples whose first value is their index; yields a function that evaluates the baseline
    beside given candidates, then chooses and publishes as the flow does."""
    from kiln.optimize import build, confirm, evaluate, prepare, publish, reference, validate
    from kiln.optimize import plan as planning
    from kiln.optimize.feeds import load_eval
    from kiln.optimize.models import BuiltCandidate
    from kiln.optimize.request import OptimizeRequest

    root = tmp_path_factory.mktemp("confirm")
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_HOME", str(kiln_home))
    data = np.random.default_rng(1).standard_normal((SAMPLES, 1, WIDTH)).astype(np.float32)
    data[:, 0, 0] = np.arange(SAMPLES)
    np.savez(root / "chain.npz", x=data)
    request = OptimizeRequest(program=str(chain(root / "chain.onnx")), data=str(root / "chain.npz"),
                              ranges=["cosine>=0.999"], candidates=[BASELINE], threads=1,
                              latency_repeats=REPEATS, store=str(root / "store"), compare_with_current=False)
    checked = validate.validate(request.program, request.shapes, request.chosen, request.name, data=request.data,
                                ranges=request.ranges, dims=request.dims, default_dims=request.default_dims)
    plan = planning.plan(request, checked)
    prepared = prepare.prepare(checked)
    ref = reference.reference(checked, plan.threads, plan.calibrate)
    base = build.build_candidates(checked, prepared, ref, plan.transforms)
    held = {int(f["x"][0, 0]) for f in load_eval(ref.held_out_path)[0]}
    made = {"folded": folded(root / "folded.onnx"), "folded-trap": folded(root / "trap.onnx", trap_samples=held)}

    def candidate(name: str) -> BuiltCandidate:
        return BuiltCandidate(name=name, backend="onnxruntime", path=str(made[name]),
                              settings=RunSettings(optimization="all"))

    def run(*names: str):
        built = [*base, *(candidate(n) for n in names)]
        evaluation = evaluate.evaluate(checked, ref, built, plan.threads, plan.request.latency_repeats)
        choice = confirm.choose(checked, ref, evaluation, plan)
        return evaluation, choice, publish.publish(checked, prepared, [publish.TargetRun(plan, evaluation, choice)])

    run.checked, run.ref, run.held, run.candidate, run.base, run.store = checked, ref, held, candidate, base, \
        request.store
    yield run
    mp.undo()


def test_the_published_speed_up_is_the_confirmation(stages, kiln_home):
    """The folded chain wins the gate on any CPU, so confirm() runs: the artifact carries the fresh rounds over
    8 inputs of the evaluation and held-out splits (not the one the selection timed) as its speed-up, beyond the
    noise, the request's latency_repeats calls per candidate, and the winner's accuracy on the held-out
    samples; `kiln inspect` shows both."""
    evaluation, choice, manifest = stages("folded")
    assert manifest.selected == "folded", [(c.name, c.reasons) for c in evaluation.candidates]
    confirmation = manifest.confirmation
    assert confirmation is not None and choice.confirmation == confirmation  # confirm() ran
    assert confirmation.inputs == 8 and set(confirmation.latency_ms) == {"folded", BASELINE}
    assert {lat.runs for lat in confirmation.latency_ms.values()} == {REPEATS}  # not the default 200
    assert len(evaluation.traffic.timed) == 1  # the selection timed one input
    assert manifest.speedup_vs_baseline == round(confirmation.speedup.value, 4)
    assert confirmation.speedup.low > 1.0  # the gate's rule for what ships
    assert confirmation.held_out_samples == len(stages.held) == 8 and confirmation.held_out_passed  # 20 % of 40
    assert confirmation.held_out["cosine"].value >= 0.999
    folder = ArtifactStore(stages.store).folder(manifest)
    assert Manifest.read(folder).confirmation == confirmation
    human = subprocess.run([str(Path(sys.executable).parent / "kiln"), "inspect", str(folder)], capture_output=True,
                           text=True, env={**os.environ, "KILN_HOME": str(kiln_home)}, timeout=120)
    assert human.returncode == 0, human.stderr
    assert "confirmed" in human.stdout and "held-out" in human.stdout  # in a wrapped table cell


def test_a_winner_that_fails_while_confirmed_loses_its_place(stages):
    """A winner that ran on every selection sample but raises on the held-out ones (which only confirmation
    runs): the run goes on, the unchanged model ships, and the winner's row says why."""
    evaluation, choice, manifest = stages("folded-trap")
    trap = next(c for c in evaluation.candidates if c.name == "folded-trap")
    assert trap.passed and trap.eligible and trap.speedup.low > 1.0  # it won the gate
    assert manifest.selected == BASELINE and manifest.confirmation is None and manifest.speedup_vs_baseline == 1.0
    assert choice.message and "folded-trap failed to run" in choice.message and "held-out" in choice.message
    row = next(c for c in manifest.candidates if c.name == "folded-trap")
    assert any(r.startswith("folded-trap failed to run") and "Gather" in r for r in row.reasons), row.reasons


def test_a_candidate_that_raises_while_timed_is_named_and_the_others_are_timed(stages):
    """The timing shared by the selection and the confirmation: over the held-out inputs too (as confirmation
    times them) the trapped candidate raises; it is named with its reason, and the baseline still gets its
    rounds."""
    from kiln.optimize.evaluate import time_candidates

    ref = stages.ref
    runnable = [(b, RunSettings(threads=1, optimization="all")) for b in stages.base] + \
        [(stages.candidate("folded-trap"), RunSettings(threads=1, optimization="all"))]
    limits = {"timeout": 300.0, "memory_mb": None, "timeout_hint": None}
    timed = time_candidates(stages.checked, [ref.path, ref.held_out_path], runnable, REPEATS, 5.0, limits,
                            static_inputs=8)
    assert set(timed.latency_ms) == {BASELINE} and timed.latency_ms[BASELINE].runs == REPEATS
    assert list(timed.failed) == ["folded-trap"] and "while timed" in timed.failed["folded-trap"]
    selection_only = time_candidates(stages.checked, [ref.path], runnable, REPEATS, 5.0, limits, static_inputs=8)
    assert set(selection_only.latency_ms) == {BASELINE, "folded-trap"} and not selection_only.failed
