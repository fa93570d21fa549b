"""The optimizer's stages and contracts as plain functions, without Prefect: the calibration split, metric
computation and scoring, the eval.npz format, the manifest round-trip, OptimizeRequest, settings, atomic_dir."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.artifact.manifest import (
    CandidateResult,
    LatencyMs,
    Manifest,
    ModelInfo,
    ProgramInfo,
    RunSettings,
    TuningInfo,
)
from kiln.artifact.specs import TensorSpec
from kiln.config import ConfigError, settings
from kiln.errors import DatasetError, KilnError, ProgramError
from kiln.fs import atomic_dir
from kiln.optimize import feeds as feeds_io
from kiln.optimize.models import CheckedProgram
from kiln.optimize.reference import check_finite, split_calibration
from kiln.optimize.request import OptimizeRequest
from kiln.optimize.scoring import compute_metrics, score
from kiln.program.datasets import Samples
from kiln.program.loader import LoadedProgram

SPEC = TensorSpec(name="x", dtype="float32", shape=[2, 3])


def checked(tmp_path: Path) -> CheckedProgram:
    return CheckedProgram(location=str(tmp_path), source=str(tmp_path), root=str(tmp_path), name="m",
                          model_path=str(tmp_path / "model.onnx"), model_sha256="", program_sha256="0" * 64,
                          shapes={}, inputs=[SPEC], outputs=[], dataset="d", samples=10, has_labels=False)


def program(tmp_path: Path, **declared) -> LoadedProgram:
    cls = type("P", (kiln.ModelProgram,), declared)
    return LoadedProgram(root=tmp_path, program=cls(), model_path=tmp_path / "model.onnx", name="m", shapes={})


def samples(n: int) -> Samples:
    return Samples(inputs={"x": np.arange(n * 3, dtype=np.float32).reshape(n, 3)}, labels=np.arange(n),
                   source="data.npz", batch=2)  # rows of the model's batch of 2


def test_calibration_split_is_kept_apart_from_the_evaluation_split(tmp_path):
    prog = program(tmp_path, dataset=kiln.Dataset(path="data.npz"), calibration_fraction=0.2)
    evaluation, calibration, source = split_calibration(prog, samples(20), checked(tmp_path))
    assert calibration.count == 4 and evaluation.count == 16 and "first 4 samples" in source
    seen = {tuple(r) for r in calibration.inputs["x"]}
    assert not seen & {tuple(r) for r in evaluation.inputs["x"]}  # int8 is judged on data it never saw
    assert list(evaluation.labels) == list(range(4, 20))


def test_calibration_split_refuses_too_few_samples_and_skips_without_data(tmp_path):
    prog = program(tmp_path, dataset=kiln.Dataset(path="data.npz"), calibration_fraction=0.5)
    with pytest.raises(DatasetError, match="too few to split"):
        split_calibration(prog, samples(3), checked(tmp_path))  # batch 2: 2 to calibrate leaves 1, not a batch
    bare = program(tmp_path)
    evaluation, calibration, source = split_calibration(bare, samples(8), checked(tmp_path))
    assert calibration is None and evaluation.count == 8 and "calibrate_on_synthetic" in source
    synthetic = program(tmp_path, calibrate_on_synthetic=True, synthetic_samples=3)
    _, calibration, source = split_calibration(synthetic, samples(8), checked(tmp_path))
    assert source == "synthetic" and calibration.count == 3  # 3 whole-tensor feeds
    assert calibration.batch is None and calibration.inputs["x"].shape == (3, 2, 3)


def test_nonfinite_reference_names_the_sample_by_its_place_in_the_data(tmp_path):
    """The message names the sample the user can find in their file, through the calibration and held-out
    splits, for outputs with one row per sample and for outputs with one row per feed of 2 rows."""
    prog = program(tmp_path, dataset=kiln.Dataset(path="data.npz"), calibration_fraction=0.2)
    evaluation, _, _ = split_calibration(prog, samples(20), checked(tmp_path))  # samples 4..19
    selection, held = evaluation.take(np.arange(0, 16, 2)), evaluation.take(np.arange(1, 16, 2))
    rows = {"p": np.zeros((8, 3), np.float32), "f": np.zeros((4, 1), np.float32)}
    held_rows = {"p": np.zeros((8, 3), np.float32), "f": np.zeros((4, 1), np.float32)}
    check_finite([(rows, selection), (held_rows, held)], checked(tmp_path))  # all finite: nothing to say
    rows["p"][6, 1], held_rows["p"][5, 0] = np.nan, np.inf  # samples 16 and 15 of the data
    with pytest.raises(DatasetError, match=r"output 'p' holds 2 NaN/Inf value\(s\), the first in sample 15"):
        check_finite([(rows, selection), (held_rows, held)], checked(tmp_path))
    rows["p"][:], held_rows["p"][:] = 0, 0
    held_rows["f"][1, 0] = -np.inf  # the second held-out feed: samples 9 and 11
    with pytest.raises(DatasetError, match="output 'f' holds 1 NaN/Inf value.* sample 9"):
        check_finite([(rows, selection), (held_rows, held)], checked(tmp_path))


def test_metrics_are_computed_and_scored_against_the_reference():
    ref = {"y": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)}
    out = {"y": np.array([[0.2, 0.8], [0.3, 0.7]], dtype=np.float32)}  # second sample's arg-max flips
    metrics = [kiln.metrics.agreement(at_least=0.9), kiln.metrics.top1(max_degradation=0.0)]
    labels = np.array([1, 0])
    reference = compute_metrics(metrics, ref, ref, labels, where="ref")
    values = compute_metrics(metrics, out, ref, labels, where="cand")
    assert reference == {"agreement": 1.0, "top1": 1.0} and values == {"agreement": 0.5, "top1": 0.5}
    results, reasons = score(metrics, values, reference)
    assert not results["agreement"].passed and not results["top1"].passed
    assert results["top1"].range == "max degradation 0 % (>= 1)"  # relative ranges resolve to numbers
    assert len(reasons) == 2 and reasons[0].startswith("agreement = 0.5, outside >= 0.9")
    ok, none = score(metrics, reference, reference)
    assert all(r.passed for r in ok.values()) and none == []


def test_a_metric_that_raises_is_explained_not_fatal():
    broken = kiln.metrics.custom(lambda outputs: 1 / 0, name="mine", at_least=0.5)
    with pytest.raises(ProgramError, match="metric 'mine' raised ZeroDivisionError") as info:
        compute_metrics([broken], {"y": np.zeros(2)}, {"y": np.zeros(2)}, None, where="program.py")
    assert info.value.where == "program.py"


def test_eval_file_round_trip(tmp_path):
    s = samples(5)
    fds = feeds_io.feeds(s, [SPEC])
    assert len(fds) == 3 and fds[-1]["x"].shape == (2, 3)  # the short last batch is padded
    np.testing.assert_array_equal(fds[-1]["x"][1], fds[-1]["x"][0])
    outputs = feeds_io.gather_outputs([{"y": f["x"] * 2} for f in fds], s.count, batch=2)
    assert outputs["y"].shape == (5, 3)  # padding dropped again
    feeds_io.save_eval(tmp_path / "eval.npz", fds, outputs, s.labels, 2)
    back, ref, labels, batch = feeds_io.load_eval(tmp_path / "eval.npz")
    assert batch == 2 and list(labels) == list(s.labels)
    np.testing.assert_array_equal(ref["y"], outputs["y"])
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(back, fds, strict=True))


def test_whole_tensor_feeds_need_no_batch_axis():
    """Scalars, vectors without a batch axis and empty tensors: one feed per sample, outputs stacked."""
    from kiln.program.datasets import check_samples, synthetic

    specs = [TensorSpec(name="a", dtype="float32", shape=[3]), TensorSpec(name="s", dtype="int64", shape=[]),
             TensorSpec(name="e", dtype="float32", shape=[0, 4])]
    s = synthetic(specs, [], count=4)
    assert s.batch is None and s.inputs["a"].shape == (4, 3) and s.inputs["s"].shape == (4,)
    fds = feeds_io.feeds(s, specs)
    assert len(fds) == 4 and fds[0]["a"].shape == (3,) and fds[0]["s"].shape == () and fds[0]["e"].shape == (0, 4)
    outs = feeds_io.gather_outputs([{"dot": np.float32(f["a"].sum()), "none": f["e"]} for f in fds], 4, None)
    assert outs["dot"].shape == (4,) and outs["none"].shape == (4, 0, 4)
    given = Samples(inputs={"a": np.zeros((5, 3), np.float32), "s": np.zeros(5, np.int64),
                            "e": np.zeros((5, 0, 4), np.float32)}, source="d")
    check_samples(given, specs, "d")
    assert given.batch is None
    mixed = Samples(inputs={"x": np.zeros((6, 3), np.float32), "y": np.zeros((6, 2, 3), np.float32)}, source="d")
    with pytest.raises(DatasetError, match="inputs mix whole tensors and rows of a batch"):
        check_samples(mixed, [TensorSpec(name="x", dtype="float32", shape=[2, 3]),
                              TensorSpec(name="y", dtype="float32", shape=[2, 3])], "d")


def manifest() -> Manifest:
    cand = CandidateResult(name="tvm", backend="tvm", latency_ms=LatencyMs(p50=1.5, p90=2.0), passed=True,
                           settings=RunSettings(threads=2, device="cpu"))
    return Manifest(name="m", created_at="2026-01-01T00:00:00", model=ModelInfo(path="model.so", sha256="a",
                    source_sha256="b"), program=ProgramInfo(sha256="c", source="/p", file="program_strict.py",
                    shapes={"x": [2, 3]}), target="llvm", inputs=[SPEC], outputs=[SPEC], dataset="d",
                    candidates=[cand], selected="tvm", backend="tvm", settings=cand.settings,
                    speedup_vs_baseline=1.2, tuning=TuningInfo(trials=8, tasks=2, records_added=8, seconds=1.0,
                                                                database="tuning/", target={"kind": "llvm"}),
                    request={"program": "/p", "trials": 8, "threads": 2, "candidates": ["onnxruntime", "tvm"],
                             "latency_repeats": 10})


def test_manifest_round_trip_keeps_every_typed_section(tmp_path):
    m = manifest()
    m.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back == m
    assert back.program.file == "program_strict.py" and back.tuning.trials == 8 and back.settings.threads == 2
    raw = json.loads((tmp_path / "manifest.json").read_text())  # the JSON an earlier kiln wrote and reads
    assert raw["program"]["file"] == "program_strict.py" and raw["tuning"]["tasks"] == 2
    assert raw["settings"]["device"] == "cpu" and raw["request"]["candidates"] == ["onnxruntime", "tvm"]


def test_manifest_from_an_earlier_kiln_still_reads(tmp_path):
    """Settings were a free dict: unknown keys survive, known ones are typed."""
    raw = json.loads(manifest().to_json())
    raw["settings"] = {"optimization": "basic", "threads": 1, "future_knob": True}
    raw["options"] = {"trials": 0, "max_trials_per_task": None, "threads": 2, "candidates": ["onnxruntime"],
                      "latency_repeats": 200}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    back = Manifest.read(tmp_path)
    assert back.settings.optimization == "basic" and back.settings.model_extra == {"future_knob": True}


def test_optimize_request_checks_every_field_once():
    r = OptimizeRequest.of(program="m.onnx", shapes=["x=2x3"], candidates=["tvm", "tvm"], upload="s3://models/p",
                           image="127.0.0.1:5000/m:v1")
    assert r.shapes == {"x": [2, 3]} and r.candidates == ["tvm"] and r.chosen == ["onnxruntime", "tvm"]
    assert OptimizeRequest.of(program="m.onnx").chosen[0] == "onnxruntime"  # the baseline is always measured
    assert r.parameters()["request"]["shapes"] == {"x": [2, 3]}
    for fields, message in [({"candidates": ["tvm", "nope"]}, "unknown candidates ['nope']"),
                            ({"target": "arm"}, "target 'arm' is not an x86-64 CPU"),
                            ({"targets": ["zen3"]}, "unknown target 'zen3'"),
                            ({"shapes": ["x=2xq"]}, "cannot read shape 'x=2xq'"),
                            ({"shapes": {"x": [2, 0]}}, "positive integers"),
                            ({"upload": "http://bucket"}, "not an s3:// URI"),
                            ({"image": "Bad/Name"}, "not a valid image reference"),
                            ({"trials": -1}, "trials:"),
                            ({"colour": "blue"}, "colour:")]:
        with pytest.raises(KilnError, match=re.escape(message)) as info:
            OptimizeRequest.of(program="m.onnx", **fields)
        assert not isinstance(info.value, ValueError)  # a plain KilnError for the front doors


def test_settings_name_the_variable_that_does_not_parse(monkeypatch, tmp_path):
    monkeypatch.setenv("KILN_HOME", str(tmp_path))
    assert settings().store_dir == tmp_path / "store"
    monkeypatch.setenv("KILN_S3_PART_MB", "3")
    with pytest.raises(ConfigError, match="KILN_S3_PART_MB") as info:
        settings()
    assert "fix or unset KILN_S3_PART_MB" in info.value.hint
    monkeypatch.delenv("KILN_S3_PART_MB")
    monkeypatch.setenv("KILN_WEBHOOK_PARAMETERS", "{not json")
    with pytest.raises(ConfigError, match="KILN_WEBHOOK_PARAMETERS is not valid JSON"):
        settings()
    monkeypatch.setenv("KILN_WEBHOOK_PARAMETERS", '{"program": "x"}')
    with pytest.raises(ConfigError, match="other than program, name and report_to"):
        settings()


def test_atomic_dir_publishes_whole_folders_or_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(final) as staged:
        (staged.path / "half").write_text("x")
        raise RuntimeError("interrupted")
    assert not final.exists() and os.listdir(tmp_path) == []  # no staging folder left behind
    with atomic_dir(final) as staged:
        (staged.path / "a").write_text("first")
    with atomic_dir(final) as staged:  # "keep": an identical concurrent result is already there
        (staged.path / "a").write_text("second")
    assert (final / "a").read_text() == "first" and os.listdir(tmp_path) == ["out"]
    with atomic_dir(final, existing="replace") as staged:
        (staged.path / "a").write_text("third")
    assert (final / "a").read_text() == "third"
    with atomic_dir(final, existing="aside") as staged:
        (staged.path / "a").write_text("fourth")
    assert (final / "a").read_text() == "fourth"
    assert [p.name.startswith(".damaged-out-") for p in tmp_path.iterdir() if p.name != "out"] == [True]


@pytest.mark.parametrize("allow", [False, True])
def test_nonfinite_inputs_are_refused_unless_the_program_allows_them(tmp_path, allow):
    import onnx
    from onnx import TensorProto, helper

    from kiln.artifact.store import ArtifactStore
    from kiln.errors import InputError

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])

    def fill(folder: Path) -> Manifest:
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
        m = manifest().model_copy(update={"backend": "onnxruntime", "selected": "onnxruntime", "tuning": None,
                                          "settings": RunSettings(optimization="all")})
        m.model = ModelInfo(path="model.onnx", sha256="", source_sha256="")
        m.program = ProgramInfo(sha256="c", source="/p", allow_nonfinite=allow)
        return m

    predictor = kiln.load(ArtifactStore(tmp_path / "store").publish(fill))
    x = np.ones((2, 3), np.float32)
    x[1, 2] = np.nan
    if allow:
        assert np.isnan(predictor.run({"x": x})["y"][1, 2])
    else:
        with pytest.raises(InputError, match=re.escape("input 'x' holds 1 NaN/Inf value(s), the first (nan) at "
                                                       "index [1, 2]")):
            predictor.run({"x": x})
    assert predictor.run({"x": np.ones((2, 3), np.float32)})["y"].sum() == 6


def _publish_many(root: str, worker: int, count: int) -> list[int]:
    from kiln.artifact.store import ArtifactStore

    def fill(folder: Path) -> Manifest:
        (folder / "model.onnx").write_text(f"{worker}-{os.getpid()}-{os.urandom(8).hex()}")
        return manifest()

    return [Manifest.read(ArtifactStore(root).publish(fill)).version for _ in range(count)]


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4) as pool:
        versions = [v for vs in pool.map(_publish_many, [str(tmp_path)] * 4, range(4), [5] * 4) for v in vs]
    assert sorted(versions) == list(range(1, 21))  # 20 artifacts, 20 versions, none assigned twice
    assert len(list((tmp_path / "m").glob("*/manifest.json"))) == 20


def test_the_compile_key_is_one_pure_function_of_the_plan_and_the_candidate(tmp_path, monkeypatch):
    """compile.job settles a build once: it seeds the tuning database from the incumbent's (the key of a
    continued search depends on what it holds) and computes the key; compile_key is a function of the plan and
    the job alone, and Prefect's cache key only hashes the job (it writes nothing, reads nothing)."""
    from kiln.compiler import DB_FILES
    from kiln.compiler.targets import resolve
    from kiln.fs import json_sha256
    from kiln.optimize.compile import cache_dir, compile_key, static_job, tuning_dir
    from kiln.optimize.models import PreparedModel
    from kiln.optimize.plan import Plan
    from tasks.stages import _compile_cache_key

    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    plan = Plan(request=OptimizeRequest(program="m.onnx", trials=8), name="m", target=resolve("host"), threads=1,
                transforms=[], compiled=["tvm"], calibrate=False)
    prepared = PreparedModel(path=str(tmp_path / "m.onnx"), sha256="ab" * 32)
    job = static_job(prepared, plan, "tvm", 8, None)
    assert job.key == compile_key(plan, job) and job.folder == str(cache_dir(job.key).resolve())
    assert not job.built and job.database is None
    assert compile_key(plan.model_copy(update={"prepack": False}), job) != job.key
    assert compile_key(plan, job.model_copy(update={"trials": 16})) != job.key
    assert compile_key(plan, job.model_copy(update={"name": "tvm-fast-math"})) != job.key
    assert compile_key(plan.model_copy(update={"target": resolve("x86-64-v3")}), job) != job.key
    # another kiln.compiler (a pass changed in this checkout, the version number not): not the old build
    import kiln.optimize.compile as compile_mod

    real = compile_mod.fingerprint
    monkeypatch.setattr(compile_mod, "fingerprint", lambda: "0" * 16)
    assert compile_key(plan, job) != job.key
    monkeypatch.setattr(compile_mod, "fingerprint", real)

    saved = tmp_path / "incumbent" / "tuning"
    saved.mkdir(parents=True)
    for name in DB_FILES:
        (saved / name).write_text('{"record": 1}\n')
    continued = static_job(prepared, plan.model_copy(update={"tuning_from": str(saved)}), "tvm", 8, None)
    assert (tuning_dir(prepared, "llvm") / DB_FILES[1]).read_text() == '{"record": 1}\n'  # seeded by the job
    assert continued.database and continued.key != job.key

    home = sorted((tmp_path / "home").rglob("*"))
    assert _compile_cache_key(None, {"job": job}) is None  # nothing on disk to point to
    done = job.model_copy(update={"built": True})
    assert _compile_cache_key(None, {"job": done}) == f"kiln-compile-{json_sha256(job.folder)[:32]}"
    assert sorted((tmp_path / "home").rglob("*")) == home
