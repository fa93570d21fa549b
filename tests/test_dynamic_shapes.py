"""Dynamic shapes end to end: a BERT-shaped model with open [batch, sequence] axes, optimized from samples at
their own lengths (a parquet file of list columns, as `datasets.Dataset.to_parquet` writes a tokenizer's unpadded
output, and a folder of one .npz per sample) with no --shape, then run at every length of its profile and
refused outside it. The profile, the data checks and the per-sample metrics are unit-tested below."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kiln
from kiln.artifact.specs import Dim, Profile, TensorSpec
from kiln.errors import DatasetError, InputError, ModelError
from kiln.optimize.feeds import gather_outputs, load_eval, save_eval
from kiln.optimize.profile import resolve
from kiln.optimize.traffic import plan_timing
from kiln.program import metrics, ragged
from kiln.program.datasets import Dataset, Samples

import onnx_models
from conftest import run_kiln

NAMES = ("input_ids", "attention_mask", "token_type_ids")
LONGEST = 29


def sentences(count: int = 40, seed: int = 0) -> list[dict[str, list[int]]]:
    """Token ids of `count` sentences of 3..LONGEST tokens, most of them short, as real text is."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.gamma(4.0, 4.0, count).astype(int) + 3, 3, LONGEST)
    lengths[0] = LONGEST
    return [{"input_ids": rng.integers(1, 100, n).tolist(), "attention_mask": [1] * int(n),
             "token_type_ids": [0] * int(n)} for n in lengths]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_parquet(path)
    return path


def write_npz_folder(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir()
    for i, row in enumerate(rows):
        np.savez(folder / f"{i:04d}.npz", **{k: np.asarray(v, np.int64) for k, v in row.items()})
    return folder


def reference(model: Path, length: int, seed: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    feed = {"input_ids": rng.integers(1, 100, (1, length)), "attention_mask": np.ones((1, length), np.int64),
            "token_type_ids": np.zeros((1, length), np.int64)}
    return feed, ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_published_without_shapes_and_served_at_every_length(tmp_path, kiln_env):
    """Unpadded samples in a parquet file (a folder of .npz loads to the same samples: test_program_loading)."""
    layout = "parquet"
    model = onnx_models.tiny_bert(tmp_path / "bert.onnx", seq=64)
    rows = sentences()
    data = write_parquet(tmp_path / "real.parquet", rows)
    proc = run_kiln(["optimize", str(model), "--data", str(data), "--range", "cosine>=0.99", "--name", f"dyn-{layout}",
                     "--candidates", "onnxruntime,ort-fp32-fused,ort-int8-fused-dynamic", "--trials", "0", "--json"],
                    kiln_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert [(d["name"], d["low"], d["high"], d["source"]) for d in manifest["profile"]["dims"]] == \
        [("batch", 1, 1, "batch default"), ("sequence", 1, LONGEST, "data")]
    assert [s["shape"] for s in manifest["inputs"]] == [[1, -1]] * 3
    # timed over inputs of several lengths, with each shape bucket's p50 beside the traffic's mean
    assert "stratified by size" in manifest["timing"] and "sequence 17-32" in manifest["timing"]
    timed = [c for c in manifest["candidates"] if c["latency_ms"]]
    buckets = [b.rsplit(" ", 1)[0] for b in manifest["timing"].split("buckets ")[1].split(", ")]
    assert len(buckets) >= 2 and len(timed) >= 2, manifest["timing"]
    assert all(list(c["latency_ms"]["buckets"]) == buckets for c in timed), [c["latency_ms"] for c in timed]
    assert manifest["confirmation"] is None or manifest["confirmation"]["inputs"] > 8

    predictor = kiln.load(Path(kiln_env["KILN_STORE"]) / f"dyn-{layout}" / manifest["id"])
    for length in (1, 3, 17, LONGEST):  # every length of the profile, each as accurate as the ranges say
        feed, want = reference(model, length)
        got = predictor.run(feed)["last_hidden_state"]
        assert got.shape == (1, length, 32)
        cos = float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want))
        assert cos >= 0.99, (length, cos)
    feed, _ = reference(model, LONGEST + 1)
    with pytest.raises(InputError, match=rf"sequence = {LONGEST + 1} \(axis 1\), outside the allowed range "
                                         rf"1\.\.{LONGEST}"):
        predictor.run(feed)
    feed, _ = reference(model, 5)
    feed["attention_mask"] = np.ones((1, 6), np.int64)
    with pytest.raises(InputError, match="sequence is 5 in input 'input_ids' but 6 in input 'attention_mask'"):
        predictor.run(feed)


def test_declared_range_without_data_and_synthetic_lengths(tmp_path, kiln_env):
    """`--dim` gives the range; the synthetic samples step through it, so the speed-up is over lengths too: the
    inputs timed fall in every power-of-two bucket from the range's low end (4) to its high end (48), and each
    candidate has a p50 in each of them."""
    model = onnx_models.tiny_bert(tmp_path / "bert.onnx", seq=64)
    proc = run_kiln(["optimize", str(model), "--dim", "sequence=4..48", "--candidates", "onnxruntime,ort-fp32-basic",
                     "--trials", "0", "--json", "--ignore-current"], kiln_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # onnxruntime is always eligible: something ships
    manifest = json.loads(proc.stdout)
    assert [{k: d[k] for k in ("name", "low", "high", "source")} for d in manifest["profile"]["dims"]] == \
        [{"name": "batch", "low": 1, "high": 1, "source": "batch default"},
         {"name": "sequence", "low": 4, "high": 48, "source": "declared"}]
    assert [s["shape"] for s in manifest["inputs"]] == [[1, -1]] * 3
    assert manifest["dataset"].startswith("synthetic (8 feeds, seed 0, batch 1, sequence 4..48)"), manifest["dataset"]
    # 8 lengths evenly from 4 to 48 (4, 10, 17, 23, 29, 35, 42, 48): every bucket they reach, one of them at
    # each end of the range, and none at 5-8 (the step is ~6); one length fixed for all would give one bucket
    assert "stratified by size" in manifest["timing"], manifest["timing"]
    buckets = [b.rsplit(" ", 1)[0] for b in manifest["timing"].split("buckets ")[1].split(", ")]
    assert buckets == ["sequence 3-4", "sequence 9-16", "sequence 17-32", "sequence 33-64"], manifest["timing"]
    timed = [c for c in manifest["candidates"] if c["latency_ms"]]
    assert [c["name"] for c in timed] == ["onnxruntime", "ort-fp32-basic"], manifest["candidates"]
    assert all(list(c["latency_ms"]["buckets"]) == buckets for c in timed), [c["latency_ms"] for c in timed]


def test_bad_samples_are_named(tmp_path, kiln_env):
    model = onnx_models.tiny_bert(tmp_path / "bert.onnx", seq=64)
    rows = sentences(12)
    cases = {
        "longer than the declared range": (rows, ["--dim", "sequence=1..16"],
                                           f"sample 0 has sequence = {LONGEST} (input 'input_ids' axis 1), outside "
                                           "the declared range 1..16"),
        "an empty list": ([*rows[:3], {k: [] for k in NAMES}, *rows[3:]], [],
                          "sample 3 of input 'input_ids' is empty"),
        "floats where the model takes int64": ([{**r, "input_ids": [i + 0.5 for i in r["input_ids"]]} for r in rows],
                                               [], "sample 0 of input 'input_ids' has dtype float64, the model "
                                                   "expects int64"),
        "a sample of another rank": ([*rows[:1], {k: [[v, v]] for k, v in rows[1].items()}, *rows[2:]], [],
                                     "sample 1 of input 'input_ids' has shape [1, 2,"),
    }
    for what, (data, extra, needle) in cases.items():
        slug = what.replace(" ", "-")
        path = write_npz_folder(tmp_path / slug, data) if "rank" in what else \
            write_parquet(tmp_path / f"{slug}.parquet", data)  # parquet columns hold one rank
        proc = run_kiln(["optimize", str(model), "--data", str(path), *extra, "--candidates", "onnxruntime",
                         "--trials", "0"], kiln_env)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "Traceback" not in output, (what, output)
        assert needle in output, (what, output)


# -- units -----------------------------------------------------------------------------------------------------

SPECS = [TensorSpec(name="ids", dtype="int64", shape=[-1, -1]), TensorSpec(name="mask", dtype="int64", shape=[-1, -1])]
DYNAMIC = {"batch": ["ids:0", "mask:0"], "seq": ["ids:1", "mask:1"]}


def test_profile_ranges_come_from_declarations_data_and_defaults():
    rows = Samples(inputs={"ids": ragged.of([np.ones((1, n), np.int64) for n in (4, 9, 2)]),
                           "mask": ragged.of([np.ones((1, n), np.int64) for n in (4, 9, 2)])})
    seen = resolve(SPECS, DYNAMIC, {}, rows, "m.onnx")
    assert seen.explain() == "batch 1 (batch default), seq 1..9 (data)"
    declared = resolve(SPECS, DYNAMIC, {"ids:1": (2, 64), "batch": (1, 8)}, rows, "m.onnx")
    assert declared.explain() == "batch 1..8 (declared), seq 2..64 (declared)"
    assert resolve(SPECS, DYNAMIC, {}, None, "m.onnx", defaults=True).explain() == \
        "batch 1 (batch default), seq 1..512 (default)"
    with pytest.raises(ModelError, match=r"no range: seq \(ids:1, mask:1\)") as err:
        resolve(SPECS, DYNAMIC, {}, None, "m.onnx")
    assert "--dim seq=LOW..HIGH" in err.value.render()
    with pytest.raises(DatasetError, match="sample 1 has seq = 9 .* outside the declared range 1..8"):
        resolve(SPECS, DYNAMIC, {"seq": (1, 8)}, rows, "m.onnx")


def test_profile_check_names_the_dimension_value_and_range():
    profile = Profile(dims=[Dim(name="seq", low=1, high=8, axes=["ids:1", "mask:1"])])
    specs = [TensorSpec(name="ids", dtype="int64", shape=[1, -1]), TensorSpec(name="mask", dtype="int64",
                                                                               shape=[1, -1])]
    profile.check({"ids": np.zeros((1, 8)), "mask": np.zeros((1, 8))}, specs)
    with pytest.raises(InputError, match=r"'ids' has seq = 9 \(axis 1\), outside the allowed range 1..8"):
        profile.check({"ids": np.zeros((1, 9)), "mask": np.zeros((1, 9))}, specs)
    with pytest.raises(InputError, match=r"has shape \[2, 4\], expected \[1, seq\(1..8\)\]"):
        profile.check({"ids": np.zeros((2, 4))}, specs)
    with pytest.raises(InputError, match="expected rank 2"):
        profile.check({"ids": np.zeros(4)}, specs)


def test_a_list_column_is_one_tensor_per_row(tmp_path):
    rows = sentences(6)
    write_parquet(tmp_path / "s.parquet", [{**r, "label": i % 2} for i, r in enumerate(rows)])
    specs = [TensorSpec(name=n, dtype="int64", shape=[-1, -1]) for n in NAMES]
    samples = Dataset(path="s.parquet").load(tmp_path, specs)
    assert samples.count == 6 and samples.batch is None and list(samples.labels) == [0, 1, 0, 1, 0, 1]
    assert [x.shape for x in samples.inputs["input_ids"]] == [(1, len(r["input_ids"])) for r in rows]


def test_metrics_and_eval_files_over_outputs_of_their_own_lengths(tmp_path):
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((1, n, 4)).astype(np.float32) for n in (3, 7, 5)]
    out = [r.copy() for r in ref]
    out[1][0, 2] += 0.5  # one token of one sentence off
    gathered = gather_outputs([{"h": o} for o in out], 3, None)
    assert ragged.is_ragged(gathered["h"])
    want = [float(np.dot(o.ravel(), r.ravel()) / np.linalg.norm(o) / np.linalg.norm(r))
            for o, r in zip(out, ref, strict=True)]
    cos = metrics.cosine(at_least=0.9).compute(gathered, {"h": ragged.of(ref)}, None)
    assert cos == pytest.approx(min(want)) and cos < 1.0
    assert metrics.max_abs_diff(at_most=1).compute(gathered, {"h": ragged.of(ref)}, None) == pytest.approx(0.5)
    feeds = [{"x": np.ones((1, n), np.int64)} for n in (3, 7, 5)]
    save_eval(tmp_path / "eval.npz", feeds, {"h": ragged.of(ref)}, None, None)
    fds, loaded, _, _ = load_eval(tmp_path / "eval.npz")
    assert [f["x"].shape for f in fds] == [(1, 3), (1, 7), (1, 5)]
    assert all(np.array_equal(a, b) for a, b in zip(loaded["h"], ref, strict=True))


def test_timed_inputs_are_stratified_by_size():
    profile = Profile(dims=[Dim(name="seq", low=1, high=64, axes=["ids:1"])])
    lengths = [3] * 50 + [20] * 30 + [60] * 20
    traffic = plan_timing([{"ids": np.zeros((1, n))} for n in lengths], profile, wanted=10)
    timed = [lengths[i] for i in traffic.timed]
    assert sorted(timed) == [3] * 5 + [20] * 3 + [60] * 2  # each timed input stands for a tenth of the samples
    assert traffic.shares == {"seq 3-4": 0.5, "seq 17-32": 0.3, "seq 33-64": 0.2}
    static = plan_timing([{"ids": np.zeros((1, 8))}] * 5, Profile())
    assert static.timed == [0] and not static.shares


PROGRAM = '''
import kiln


class Program(kiln.ModelProgram):
    name = "dyn-batched"
    dims = {"batch": (1, 8)}  # the sequence's range comes from the data
    padding = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}
    dataset = kiln.Dataset(path="real.parquet")
    metrics = [kiln.metrics.cosine(at_least=0.99)]
'''


def test_batched_serving_gives_each_caller_its_own_rows(tmp_path, kiln_env):
    """Requests of different lengths queued together are padded to the longest (the program names the pad
    values), run as one call and cut back: each caller gets what its request alone gives, the statistics count
    fewer executions than inferences, and the config says so as Triton's does."""
    import threading

    import tritonclient.grpc as tgrpc

    from conftest import Served

    program = tmp_path / "program"
    program.mkdir()
    onnx_models.tiny_bert(program / "model.onnx", seq=64)
    write_parquet(program / "real.parquet", sentences())
    (program / "program.py").write_text(PROGRAM)
    proc = run_kiln(["optimize", str(program), "--candidates", "onnxruntime", "--trials", "0", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["profile"]["dims"][0]["high"] == 8 and manifest["program"]["padding"]["attention_mask"] == 0
    artifact = Path(kiln_env["KILN_STORE"]) / "dyn-batched" / manifest["id"]
    alone = kiln.load(artifact)
    rng = np.random.default_rng(3)
    requests = []
    for i in range(24):
        rows, length = (2 if i % 6 == 0 else 1), int(rng.integers(2, LONGEST + 1))
        requests.append({"input_ids": rng.integers(1, 100, (rows, length)),
                         "attention_mask": np.ones((rows, length), np.int64),
                         "token_type_ids": np.zeros((rows, length), np.int64)})
    want = [alone.run(r)["last_hidden_state"] for r in requests]

    served = Served(artifact, "--max-queue-delay-us", "50000", "--max-batch", "8", env=kiln_env)
    try:
        client = tgrpc.InferenceServerClient(served.address)
        config = client.get_model_config("dyn-batched", as_json=True)["config"]
        assert int(config["max_batch_size"]) == 8 and [int(d) for d in config["input"][0]["dims"]] == [-1]
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 50000
        got: dict[int, np.ndarray] = {}
        start = threading.Barrier(len(requests))

        def call(i: int) -> None:
            inputs = []
            for name, arr in requests[i].items():
                inp = tgrpc.InferInput(name, list(arr.shape), "INT64")
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            start.wait()
            got[i] = tgrpc.InferenceServerClient(served.address).infer("dyn-batched", inputs).as_numpy(
                "last_hidden_state")

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(got) == list(range(len(requests)))
        for i, expected in enumerate(want):
            assert got[i].shape == expected.shape, (i, got[i].shape, expected.shape)
            np.testing.assert_allclose(got[i], expected, rtol=1e-4, atol=1e-4)
        stats = client.get_inference_statistics("dyn-batched", as_json=True)["model_stats"][0]
        assert int(stats["inference_count"]) == len(requests)
        assert int(stats["execution_count"]) < len(requests), stats  # some requests shared a call
        assert any(int(b["batch_size"]) > 1 for b in stats["batch_stats"]), stats["batch_stats"]
        too_many = tgrpc.InferInput("input_ids", [9, 4], "INT64")
        too_many.set_data_from_numpy(np.ones((9, 4), np.int64))
        others = []
        for name in ("attention_mask", "token_type_ids"):
            inp = tgrpc.InferInput(name, [9, 4], "INT64")
            inp.set_data_from_numpy(np.ones((9, 4), np.int64))
            others.append(inp)
        with pytest.raises(Exception, match=r"batch = 9 \(axis 0\), outside the allowed range 1\.\.8"):
            client.infer("dyn-batched", [too_many, *others])
    finally:
        served.stop()


def test_tvm_buckets_pad_each_request_and_cut_its_outputs(tmp_path, kiln_env):
    """TVM builds static shapes: one build per bucket of the sequence, chosen from the data's lengths, and a
    runner that pads each request (the mask with zeros) up to the smallest bucket that holds it. Its outputs on
    every sample are judged by the range like any candidate's, and equal the unpadded model's at every length."""

    model = onnx_models.tiny_bert(tmp_path / "bert.onnx", seq=64)
    data = write_parquet(tmp_path / "real.parquet", sentences())
    env = {**kiln_env, "KILN_HOPELESS_SLOWDOWN": "0"}  # untuned TVM is slow: judge its accuracy all the same
    proc = run_kiln(["optimize", str(model), "--data", str(data), "--range", "cosine>=0.999", "--name", "dyn-tvm",
                     "--candidates", "onnxruntime,tvm", "--trials", "0", "--json", "--min-gain", "0"], env)
    assert proc.returncode == 0, proc.stderr  # untuned TVM is slower: onnxruntime ships, the tvm row is judged
    home = Path(kiln_env["KILN_HOME"])
    folders = [p for p in (home / "cache" / "tvm").glob("buckets-*") if p.is_dir()]
    assert len(folders) == 1, folders
    buckets = sorted(int(p.name.split("-")[1].split(".")[0]) for p in folders[0].glob("bucket-*.so"))
    assert len(buckets) >= 2 and buckets[-1] == LONGEST, buckets  # the largest: the profile's upper end
    tvm = next(c for c in json.loads(proc.stdout)["candidates"] if c["name"] == "tvm")
    assert tvm["settings"]["buckets"] == buckets and tvm["settings"]["bucket_dim"] == "sequence"
    assert tvm["passed"] and tvm["metrics"]["cosine"]["value"] >= 0.999, tvm  # every sample, padded to its bucket
    # the dispatcher itself, against the unpadded model, at lengths inside and at the edges of each bucket (in a
    # child: the TVM runtime alone must not be loaded into this process, whose other tests compile)
    lengths = sorted({1, 2, *buckets, *(b - 1 for b in buckets), LONGEST})
    check = subprocess.run([sys.executable, "-c", DISPATCH, str(folders[0]), str(model), json.dumps(buckets),
                            json.dumps(lengths)], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout.splitlines()[-1]) == {str(n): [1, n, 32] for n in lengths}


def test_a_model_that_mixes_padded_positions_is_refused_with_the_padding_named(tmp_path, kiln_env):
    """A model whose every output reads every position of the width (a mean over it): TVM's bucket builds pad
    the width, so its outputs miss the range, and the row says that onnxruntime on the same padded inputs
    misses it too (the padding, not the compiler), with what to change."""
    model = onnx_models.width_mean(tmp_path / "mean.onnx")
    data = tmp_path / "rows"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, width in enumerate([5, 7, 9, 12, 16, 23, 30, 40] * 3):
        np.savez(data / f"{i:02d}.npz", x=rng.standard_normal((1, 4, width)).astype(np.float32) + 1)
    env = {**kiln_env, "KILN_HOPELESS_SLOWDOWN": "0"}
    proc = run_kiln(["optimize", str(model), "--data", str(data), "--range", "max_abs_diff<=1e-4", "--name", "mean",
                     "--candidates", "onnxruntime,tvm", "--trials", "0", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    tvm = next(c for c in json.loads(proc.stdout)["candidates"] if c["name"] == "tvm")
    assert len(tvm["settings"]["buckets"]) >= 2 and not tvm["passed"], tvm
    why = next((r for r in tvm["reasons"] if r.startswith("padding alone misses the range")), None)
    assert why and "max_abs_diff = " in why and "width buckets" in why and "--shape" in why, tvm["reasons"]


def test_a_tuning_time_too_short_for_every_bucket_builds_fewer(tmp_path, kiln_env):
    """Under --tune-time, a bucket build whose kernels get no trial keeps TVM's untuned schedules, slower than
    padding to a larger tuned build: kiln builds only as many buckets as the time gives a first round each (from
    the model's tasks and this CPU's trial costs), the profile's upper end always, and says so."""
    model = onnx_models.tiny_bert(tmp_path / "bert.onnx", seq=64)
    data = write_parquet(tmp_path / "real.parquet", sentences())
    env = {**kiln_env, "KILN_HOPELESS_SLOWDOWN": "0"}  # untuned TVM is slow: judge its accuracy all the same
    proc = run_kiln(["optimize", str(model), "--data", str(data), "--range", "cosine>=0.999", "--name", "dyn-short",
                     "--candidates", "onnxruntime,tvm", "--tune-time", "3s", "--json", "--min-gain", "0"], env)
    assert proc.returncode == 0, proc.stderr
    tvm = next(c for c in json.loads(proc.stdout)["candidates"] if c["name"] == "tvm")
    assert tvm["settings"]["buckets"] == [LONGEST], tvm["settings"]  # every length served, by the one build
    why = next(n for n in tvm["notes"] if "bucket builds" in n)  # in the candidate's row, not only the log
    assert "cannot give" in why and f"1 built ({LONGEST}), requests padded up to them" in why, why
    assert tvm["passed"] and tvm["metrics"]["cosine"]["value"] >= 0.999, tvm


def test_builds_affordable_under_a_time_budget():
    from kiln.optimize.buckets import builds_affordable, choose_grid

    assert builds_affordable(100, 840) == 1 and builds_affordable(1200, 400) == 3 and builds_affordable(5, 0) >= 3
    w = Dim(name="width", low=1, high=1530, axes=["x:3"])
    points = [(400,)] * 10 + [(900,)] * 10 + [(1500,)] * 2
    assert len(choose_grid([w], points)) == 3
    assert [b.values for b in choose_grid([w], points, most=1)] == [[1530]]
    assert choose_grid([w], points, most=2)[-1].values == [1530]


DISPATCH = """
import json, sys
import numpy as np
from pathlib import Path
from test_dynamic_shapes import LONGEST, NAMES, reference
from kiln.artifact.manifest import RunSettings
from kiln.artifact.specs import Dim, Profile, TensorSpec
from kiln.runtime.runners import open_runner

folder, model, buckets, lengths = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
dim = Dim(name="sequence", low=1, high=LONGEST, axes=[f"{n}:1" for n in NAMES], outputs=["last_hidden_state:1"])
specs = [TensorSpec(name=n, dtype="int64", shape=[1, -1]) for n in NAMES]
outs = [TensorSpec(name="last_hidden_state", dtype="float32", shape=[1, -1, 32])]
settings = RunSettings(buckets=buckets, bucket_dim="sequence")
runner = open_runner("tvm", folder, specs, outs, settings, Profile(dims=[dim]))
shapes = {}
for n in lengths:
    feed, want = reference(model, n)
    got = runner.run(feed)["last_hidden_state"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    shapes[str(n)] = list(got.shape)
print(json.dumps(shapes))
"""


def test_batcher_groups_what_fits_and_answers_everyone():
    """The batcher alone (no server): equal shapes share a call without padding, a request of another length
    waits for its own, one of more rows than --max-batch runs alone, and each caller gets its rows back."""
    import asyncio
    from types import SimpleNamespace

    from kiln.serving.batching import Batcher, BatchingConfig

    seq = Dim(name="seq", low=1, high=64, axes=["x:1"], outputs=["y:1"])
    batch = Dim(name="batch", low=1, high=8, axes=["x:0"], outputs=["y:0"])
    manifest = SimpleNamespace(profile=Profile(dims=[batch, seq]))
    calls: list[tuple[int, int]] = []

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(manifest, batch, lambda feed: {"y": feed["x"] * 2}, instances=1,
                          config=BatchingConfig(max_batch=3, max_queue_delay_us=20_000),
                          on_batch=lambda requests, rows, ns: calls.append((requests, rows)))
        shapes = [(1, 12), (1, 30), (1, 12), (2, 12), (4, 12)]
        feeds = [{"x": np.arange(np.prod(s), dtype=np.float32).reshape(s) + i} for i, s in enumerate(shapes)]
        done = await asyncio.gather(*(batcher.submit(f) for f in feeds))
        return feeds, [d.outputs["y"] for d in done]

    feeds, outputs = asyncio.run(scenario())
    for feed, out in zip(feeds, outputs, strict=True):
        np.testing.assert_array_equal(out, feed["x"] * 2)
    # the two [1, 12] together (the [2, 12] would make 4 rows > 3: its own call), [1, 30] and [4, 12] alone
    assert sorted(calls) == [(1, 1), (1, 2), (1, 4), (2, 2)], calls


def test_bucket_runner_pads_inputs_and_cuts_every_output_back(tmp_path):
    """The dispatcher around stand-in builds (no TVM): each request padded to the smallest bucket holding it,
    with the program's pad values; outputs cut on exactly the profile's output axes of the padded dimension
    (tests/test_shape_contract.py: an axis it does not name is never cut)."""
    from kiln.runtime.buckets import BucketRunner

    seen = []

    def load(module, specs):
        bucket = specs[0].shape[1]

        def run(feed):
            seen.append((module.name, feed["ids"].shape, int(feed["ids"][0, -1]), int(feed["mask"][0, -1])))
            assert feed["ids"].shape == (1, bucket)
            return {"hidden": np.ones((1, bucket, 4)), "scores": np.ones((1, bucket)), "pooled": np.ones((1, 4))}
        return SimpleRunner(run)

    dim = Dim(name="seq", low=1, high=40, axes=["ids:1", "mask:1"], outputs=["hidden:1", "scores:1"],
              padding={"ids": 7})
    specs = [TensorSpec(name=n, dtype="int64", shape=[1, -1]) for n in ("ids", "mask")]
    runner = BucketRunner(tmp_path, dim, [8, 16, 40], specs, load)
    out = runner.run({"ids": np.ones((1, 11), np.int64), "mask": np.ones((1, 11), np.int64)})
    assert seen[-1] == ("bucket-16.so", (1, 16), 7, 0)  # ids padded with 7, the mask with 0
    assert {k: v.shape for k, v in out.items()} == {"hidden": (1, 11, 4), "scores": (1, 11), "pooled": (1, 4)}
    runner.run({"ids": np.ones((1, 40), np.int64), "mask": np.ones((1, 40), np.int64)})
    assert seen[-1][:2] == ("bucket-40.so", (1, 40))


class SimpleRunner:
    def __init__(self, run):
        self.run = run

    def close(self):
        pass


def test_a_batch_declared_as_one_value_feeds_rows_that_many_at_a_time(tmp_path):
    from kiln.optimize.profile import fix_declared

    specs = [TensorSpec(name="ids", dtype="int64", shape=[-1, -1])]
    fixed = fix_declared(specs, {"batch": ["ids:0"], "seq": ["ids:1"]}, {"batch": (4, 4), "seq": (1, 8)}, "m")
    assert fixed[0].shape == [4, -1]
    np.savez(tmp_path / "rows.npz", ids=np.ones((10, 8), np.int64))
    samples = Dataset(path="rows.npz").load(tmp_path, fixed)
    assert samples.batch == 4 and samples.count == 10


def test_a_bucketed_candidates_tuning_counts_every_bucket():
    """The manifest's tuning of a bucketed TVM candidate is every bucket's search (each a static build tuned with
    its share of the budget), not the largest bucket's alone: trials, failures and seconds summed, each task row
    named by its bucket, the database the largest bucket's."""
    from kiln.artifact.manifest import TaskTuning, TuningInfo
    from kiln.optimize.compile import bucket_tuning

    def info(value: int, trials: int, failed: int) -> TuningInfo:
        return TuningInfo(trials=trials, tasks=1, records_added=trials, seconds=float(trials), database=f"db{value}",
                          target={"mcpu": "x"}, trials_run=trials, failed_trials=failed, stopped_by="trials",
                          estimated_ms=1.0, per_task=[TaskTuning(name="dense", weight=1, trials=trials,
                                                                 failed_trials=failed)])

    merged = bucket_tuning("sequence", {16: info(16, 30, 1), 64: info(64, 10, 2)}, top=16)
    assert (merged.trials, merged.trials_run, merged.failed_trials, merged.seconds) == (40, 40, 3, 40.0)
    assert merged.database == "db16" and merged.estimated_ms is None
    assert [(t.name, t.trials) for t in merged.per_task] == [("sequence = 16: dense", 30), ("sequence = 64: dense", 10)]
    assert bucket_tuning("sequence", {16: info(16, 5, 0)}, top=16).per_task[0].name == "dense"  # one bucket: as built


def test_output_axis_relations_are_fitted_only_where_the_probes_decide_them():
    from kiln.optimize.trace_axes import fit

    def points(relation, values):
        return [(v, relation(v)) for v in values]

    probes = [20, 21, 22, 23, 40, 60, 97]
    assert fit(points(lambda w: w // 2, probes), 1, 97) == (2, 0)
    assert fit(points(lambda w: (w + 3) // 8, [*probes, 90, 91, 92, 93, 94, 95, 96]), 1, 97) == (8, 3)  # PP-OCR's rec
    assert fit(points(lambda w: w - 6, probes), 7, 97) == (1, -6)  # an unpadded 7-wide convolution
    assert fit(points(lambda w: 5, probes), 1, 97) is None  # a fixed length follows nothing
    assert fit([(20, 10), (40, 20), (60, 30)], 1, 97) is None  # w // 2 or (w + 1) // 2: the points leave it open
    assert fit(points(lambda w: w * w, probes), 1, 97) is None  # not a stride
    # a detector that runs only at multiples of 32 (PP-OCR's): probed and fitted on those, its map as large
    from kiln.optimize.trace_axes import probe_values

    on_32 = probe_values(Dim(name="height", low=1, high=640, axes=["x:2"]), own=224, step=32)
    assert on_32 and all(v % 32 == 0 and 32 <= v <= 640 for v in on_32) and 224 in on_32 and 640 in on_32
    assert fit(points(lambda h: h, on_32), 1, 640, step=32) == (1, 0)
    assert fit(points(lambda h: h // 4, on_32), 1, 640, step=32) == (4, 0)


def test_a_strided_output_axis_is_traced_and_cut_and_a_constant_axis_stays_fixed(tmp_path, kiln_env):
    """A recognizer (x[1, 3, height, width] -> logits [1, steps, classes], steps = width // 2, named unlike the
    width) from crops all 8 high and of their own widths, no --shape: the height is fixed at 8 from the data, the
    width varies 1..its largest, so TVM builds buckets of it; the time axis is traced (floor(width / 2)) and each
    padded output is cut back by it, so the tvm row agrees with onnxruntime per time step on every crop."""
    from kiln.artifact.specs import Dim, TracedAxis

    model = onnx_models.line_recognizer(tmp_path / "rec.onnx", height="height")
    rng = np.random.default_rng(0)
    crops = tmp_path / "crops"
    crops.mkdir()
    widths = [20, 23, 30, 41, 47, 52, 64, 70, 77, 89, 97, 33]
    for i, width in enumerate(widths):
        np.savez(crops / f"{i:02d}.npz", x=rng.standard_normal((1, 3, 8, width)).astype(np.float32))
    env = {**kiln_env, "KILN_HOPELESS_SLOWDOWN": "0"}  # untuned TVM is slow: judge its accuracy all the same
    proc = run_kiln(["optimize", str(model), "--data", str(crops), "--range", "agreement[axis=-1]>=0.99",
                     "--candidates", "onnxruntime,tvm", "--trials", "0", "--json", "--min-gain", "0"], env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    dims = {d["name"]: Dim(**d) for d in manifest["profile"]["dims"]}
    assert (dims["height"].low, dims["height"].high, dims["height"].source) == (8, 8, "data: every sample")
    assert (dims["width"].low, dims["width"].high) == (1, max(widths))
    assert dims["width"].traced == [TracedAxis(tensor="logits", index=1, stride=2, offset=0)]
    tvm = next(c for c in manifest["candidates"] if c["name"] == "tvm")
    assert tvm["settings"]["bucket_dim"] == "width" and len(tvm["settings"]["buckets"]) >= 2, tvm["settings"]
    assert tvm["metrics"]["agreement[axis=-1]"]["value"] == 1.0 and tvm["passed"], tvm
    cut = dims["width"].cut({"logits": np.zeros((1, 48, 12))}, 41)  # a crop 41 wide padded to a bucket of 97
    assert cut["logits"].shape == (1, 20, 12)
    old = {k: v for k, v in manifest["profile"]["dims"][1].items() if k != "traced"}  # manifests from before
    assert Dim(**old).traced == [] and Dim(**old).cut({"logits": np.zeros((1, 48, 12))}, 41)["logits"].shape[1] == 48


def test_a_two_dimension_grid_is_chosen_from_the_joint_histogram():
    from kiln.optimize.buckets import bucketed_dims, choose, choose_grid

    h, w = Dim(name="height", low=1, high=200, axes=["x:2"]), Dim(name="width", low=1, high=300, axes=["x:3"])
    points = [(30, 40)] * 10 + [(60, 100)] * 5 + [(190, 290)] * 2
    grid = choose_grid([h, w], points)
    keys = [b.key for b in grid]
    assert (200, 300) in keys and 2 <= len(keys) <= 4  # the corner serves every shape the profile accepts
    assert keys == sorted(keys, key=lambda k: (k[0] * k[1], k))  # least work first: the runtime's order
    assert abs(sum(b.share for b in grid) - 1) < 1e-9
    smallest = grid[0]
    assert smallest.key[0] >= 30 and smallest.key[1] >= 40 and smallest.share >= 10 / 17  # the common crop's own
    one = choose_grid([w], [(p[1],) for p in points])
    assert [b.values for b in one] == [[b.value] for b in choose(w, [p[1] for p in points])]
    three = Profile(dims=[h, w, Dim(name="c", low=1, high=4, axes=["x:1"])])
    assert bucketed_dims(three)[1].startswith("TVM's per-bucket builds vary one or two dimensions")
    assert bucketed_dims(Profile(dims=[h, w]))[0] == [h, w]


def test_a_grid_runner_pads_both_dimensions_and_cuts_the_traced_map(tmp_path):
    """The dispatcher over a grid, around onnxruntime stand-ins for the builds: each request padded on height and
    width to the bucket of least work that holds it, and the detector's map (height + 1) // 2 x (width + 1) // 2
    cut back by its traced relation: equal to the unpadded model's at every size, the edges included."""
    from kiln.artifact.manifest import RunSettings
    from kiln.artifact.specs import TracedAxis
    from kiln.runtime.buckets import BucketRunner
    from kiln.runtime.runners import OrtRunner

    model = onnx_models.text_detector(tmp_path / "det.onnx")
    h = Dim(name="height", low=1, high=64, axes=["x:2"], traced=[TracedAxis(tensor="map", index=2, stride=2, offset=1)])
    w = Dim(name="width", low=1, high=96, axes=["x:3"], traced=[TracedAxis(tensor="map", index=3, stride=2, offset=1)])
    used = []

    def load(module, specs):
        used.append((module.name, specs[0].shape))
        return OrtRunner(model)

    specs = [TensorSpec(name="x", dtype="float32", shape=[1, 3, -1, -1])]
    runner = BucketRunner(tmp_path, [h, w], [(32, 48), (64, 96), (32, 96)], specs, load)
    assert sorted(used) == [("bucket-32x48.so", [1, 3, 32, 48]), ("bucket-32x96.so", [1, 3, 32, 96]),
                            ("bucket-64x96.so", [1, 3, 64, 96])]
    assert runner.bucket_for((20, 40)) == (32, 48) and runner.bucket_for((20, 50)) == (32, 96)
    assert runner.bucket_for((33, 10)) == (64, 96)
    alone = OrtRunner(model)
    rng = np.random.default_rng(0)
    for size in [(5, 7), (31, 47), (32, 48), (20, 50), (33, 95), (64, 96)]:
        feed = {"x": rng.standard_normal((1, 3, *size)).astype(np.float32)}
        want, got = alone.run(feed)["map"], runner.run(feed)["map"]
        assert got.shape == want.shape == (1, 1, (size[0] + 1) // 2, (size[1] + 1) // 2), size
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    old = RunSettings(buckets=[8, 16], bucket_dim="seq")  # an artifact from before grids
    assert old.bucket_grid() == (["seq"], [(8,), (16,)])
    assert RunSettings(buckets=[[32, 48]], bucket_dims=["h", "w"]).bucket_grid() == (["h", "w"], [(32, 48)])


def test_a_detector_whose_height_and_width_vary_gets_a_tvm_grid(tmp_path, kiln_env):
    """A detector from pages of their own heights and widths: TVM builds a grid of (height, width) buckets (the
    corner among them), pads each page to the bucket of least work that holds it, and cuts the map back by the
    traced relations: its outputs agree with onnxruntime's on every page (judged, whatever its speed)."""
    model = onnx_models.text_detector(tmp_path / "det.onnx")
    rng = np.random.default_rng(0)
    pages = tmp_path / "pages"
    pages.mkdir()
    sizes = [(30, 40)] * 6 + [(28, 60)] * 3 + [(60, 90)] * 3
    for i, (h, w) in enumerate(sizes):
        np.savez(pages / f"{i:02d}.npz", x=rng.standard_normal((1, 3, h, w)).astype(np.float32))
    env = {**kiln_env, "KILN_HOPELESS_SLOWDOWN": "0"}
    proc = run_kiln(["optimize", str(model), "--data", str(pages), "--candidates", "onnxruntime,tvm", "--trials", "0",
                     "--json", "--min-gain", "0"], env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    tvm = next(c for c in manifest["candidates"] if c["name"] == "tvm")
    assert tvm["settings"]["bucket_dims"] == ["height", "width"], tvm["settings"]
    grid = [tuple(b) for b in tvm["settings"]["buckets"]]
    assert (60, 90) in grid and len(grid) >= 2 and all(h >= 28 and w >= 40 for h, w in grid), grid
    assert tvm["passed"] and tvm["metrics"]["cosine"]["value"] >= 0.9999, tvm
    traced = {d["name"]: d["traced"] for d in manifest["profile"]["dims"]}
    assert traced["height"] == [{"tensor": "map", "index": 2, "stride": 2, "offset": 1, "step": 1}]
    assert traced["width"] == [{"tensor": "map", "index": 3, "stride": 2, "offset": 1, "step": 1}]
