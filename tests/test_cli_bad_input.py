"""Every bad input: a clear message, a non-zero exit, no traceback, nothing published, the store untouched.

Each case runs the real `kiln optimize` against a real Prefect server.
"""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import onnx_models
from conftest import run_kiln, store_snapshot

TRIALS = "8"  # the same budget as the integration test, so the TVM build is shared through the cache


@pytest.fixture
def seeded_store(kiln_env) -> Path:
    """A store that already holds something, to prove failures never touch it."""
    store = Path(kiln_env["KILN_STORE"])
    (store / "earlier" / "0123456789abcdef").mkdir(parents=True)
    (store / "earlier" / "0123456789abcdef" / "manifest.json").write_text('{"kept": true}')
    return store


def expect_failure(args, env, store: Path, *needles: str, code: int = 2) -> str:
    before = store_snapshot(store)
    proc = run_kiln(["optimize", *args], env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == code, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output}"
    after = store_snapshot(store)
    assert after == before, "a failed run changed the store"
    return output


def test_not_an_onnx_file(tmp_path, kiln_env, seeded_store):
    bad = tmp_path / "model.onnx"
    bad.write_text("definitely not protobuf " * 50)
    expect_failure([str(bad)], kiln_env, seeded_store, "not an ONNX model", str(bad))


def test_truncated_onnx(tmp_path, kiln_env, seeded_store, digits_program):
    data = (digits_program / "model.onnx").read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 3])
    expect_failure([str(bad), "--shape", "pixels=1x64"], kiln_env, seeded_store, "truncated.onnx")


def test_checker_failure(tmp_path, kiln_env, seeded_store):
    path = onnx_models.checker_failure(tmp_path / "broken.onnx")
    expect_failure([str(path)], kiln_env, seeded_store, "ONNX checker rejects the model", "ghost")


def test_operators_tvm_cannot_compile_skip_only_the_tvm_candidate(tmp_path, kiln_env):
    """An LSTM (no TVM converter; onnxruntime runs it): the tvm candidate is skipped with the operators and
    nodes named, in the CLI output and the manifest, and an onnxruntime candidate is published."""
    path = onnx_models.lstm(tmp_path / "lstm.onnx")
    proc = run_kiln(["optimize", str(path), "--candidates", "tvm,ort-fp32-basic", "--trials", "0"], kiln_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tvm: skipped: TVM cannot compile 1 operator type(s): LSTM (nodes: encoder_lstm)" in proc.stdout
    artifact = Path(re.search(r"artifact: (\S+)", proc.stdout).group(1))
    manifest = json.loads((artifact / "manifest.json").read_text())
    tvm = next(c for c in manifest["candidates"] if c["name"] == "tvm")
    assert tvm["reasons"] == ["skipped: TVM cannot compile 1 operator type(s): LSTM (nodes: encoder_lstm)"]
    assert manifest["backend"] == "onnxruntime" and manifest["selected"] in ("onnxruntime", "ort-fp32-basic")


def test_undeclared_dynamic_dimension(tmp_path, kiln_env, seeded_store):
    """A sequence axis with neither a declared range nor data to show one: the hint names the range options
    (never a one-token shape); the open batch axis beside it needs nothing (batch 1)."""
    model = onnx_models.tiny_bert(tmp_path / "bert.onnx")
    output = expect_failure([str(model)], kiln_env, seeded_store,
                            "dynamic dimensions with no range: sequence (input_ids:1, attention_mask:1, "
                            "token_type_ids:1)", "--dim sequence=LOW..HIGH", "--data samples.parquet")
    assert "batch" not in output.split("no range:")[1].split("\n")[0] and "=1x1" not in output


def test_dimension_ranges_that_cannot_be(tmp_path, kiln_env, seeded_store):
    model = onnx_models.tiny_bert(tmp_path / "bert.onnx")
    expect_failure([str(model), "--dim", "sequence=16..4"], kiln_env, seeded_store,
                   "the range of dimension 'sequence' is 16..4")
    expect_failure([str(model), "--dim", "seq=1..8"], kiln_env, seeded_store,
                   "a range is declared for dimension 'seq', which the model's inputs do not have",
                   "batch (input_ids:0, attention_mask:0, token_type_ids:0); sequence (input_ids:1")


def _program_copy(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "prog"
    shutil.copytree(src, dest)
    return dest


def test_program_syntax_error(tmp_path, kiln_env, seeded_store, digits_program):
    prog = _program_copy(digits_program, tmp_path)
    header = "class Digits(kiln.ModelProgram)"
    text = (prog / "program.py").read_text().replace(header + ":", header)
    (prog / "program.py").write_text(text)
    line = text.splitlines().index(header) + 1
    expect_failure([str(prog)], kiln_env, seeded_store, f"program.py:{line}", "syntax error")


def test_program_missing_required_names(tmp_path, kiln_env, seeded_store, digits_program):
    prog = _program_copy(digits_program, tmp_path)
    (prog / "program.py").write_text("import kiln\n\nMODEL = 'model.onnx'\n")
    expect_failure([str(prog)], kiln_env, seeded_store, "must define exactly one subclass of kiln.ModelProgram")
    (prog / "program.py").write_text((digits_program / "program.py").read_text().replace('"model.onnx"', '"gone.onnx"'))
    expect_failure([str(prog)], kiln_env, seeded_store, "model file 'gone.onnx' not found")


def test_dataset_shape_mismatch(tmp_path, kiln_env, seeded_store, digits_program):
    prog = _program_copy(digits_program, tmp_path)
    data = dict(np.load(prog / "digits.npz"))
    data["x_test"] = data["x_test"][:, :60]
    np.savez(prog / "digits.npz", **data)
    expect_failure([str(prog)], kiln_env, seeded_store, "digits.npz", "shape [397, 60]",
                   "expected whole tensors [N, 1, 64] or rows [M, 64]")


def test_dataset_dtype_mismatch(tmp_path, kiln_env, seeded_store, digits_program):
    prog = _program_copy(digits_program, tmp_path)
    data = dict(np.load(prog / "digits.npz"))
    data["x_test"] = data["x_test"].astype(str)
    np.savez(prog / "digits.npz", **data)
    expect_failure([str(prog)], kiln_env, seeded_store, "the model expects float32")


def test_archive_escaping_its_folder(tmp_path, kiln_env, seeded_store, digits_program):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in digits_program.iterdir():
            if p.is_file():
                zf.write(p, f"digits/{p.name}")
        zf.writestr("digits/../../escaped.txt", "gotcha")
    expect_failure([str(archive)], kiln_env, seeded_store, "would be written outside the program folder")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_out_of_range_indices_in_the_dataset(tmp_path, kiln_env, seeded_store):
    prog = tmp_path / "embed"
    prog.mkdir()
    onnx_models.embedding(prog / "model.onnx", vocab=50)
    ids = np.random.default_rng(0).integers(0, 50, size=(8, 6))
    ids[5, 2] = 50  # one past the table
    np.savez(prog / "data.npz", ids=ids)
    (prog / "program.py").write_text(
        "import kiln\n\nclass Embed(kiln.ModelProgram):\n    dataset = kiln.Dataset(path='data.npz')\n")
    expect_failure([str(prog)], kiln_env, seeded_store, "'ids' holds 50 at index [5, 2]", "valid range is [-50, 50)")


def test_metric_range_no_candidate_meets(tmp_path, kiln_env, seeded_store, digits_program):
    prog = _program_copy(digits_program, tmp_path)
    text = (prog / "program.py").read_text().replace("metrics.top1(at_least=0.95)", "metrics.top1(at_least=0.999)")
    (prog / "program.py").write_text(text)
    out = expect_failure([str(prog), "--trials", TRIALS, "--candidates", "onnxruntime,tvm,ort-int8-static"],
                         kiln_env, seeded_store, "no candidate is inside every metric range", "nothing was published",
                         "top1: >= 0.999", code=1)
    table = out[out.index("candidate"):]
    assert "onnxruntime" in table and "tvm" in table and "ort-int8-static" in table
    assert re.search(r"0\.99\d* FAIL", table)  # each candidate's top-1 score, and why it failed


def test_unreachable_prefect_server(tmp_path, kiln_env, seeded_store, digits_program):
    from conftest import free_port

    env = {**kiln_env, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    expect_failure([str(digits_program)], env, seeded_store, "cannot reach the Prefect server",
                   "unset PREFECT_API_URL")


def test_proto_message_that_does_not_exist(tmp_path, kiln_env, seeded_store, digits_program):
    prog = _program_copy(digits_program, tmp_path)
    text = (prog / "program.py").read_text().replace('request = "DigitsRequest"', 'request = "DigitRequest"')
    (prog / "program.py").write_text(text)
    expect_failure([str(prog)], kiln_env, seeded_store, "request message 'DigitRequest' is not defined in digits.proto",
                   "DigitsRequest")


def test_error_text_with_brackets_is_printed_verbatim(kiln_env):
    """Messages are plain text: `NAME[/ID]` in a hint once crashed the printer (rich markup) with a traceback."""
    for args in (["serve", "no-such-model"], ["inspect", "no-such-model"], ["image", "no-such-model", "r/x"]):
        proc = run_kiln(args, kiln_env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "NAME[/ID]" in proc.stderr and "Traceback" not in proc.stderr
    bad = run_kiln(["upload", "no-such-model", "s3://models/x"], {**kiln_env, "KILN_S3_PART_MB": "abc"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_every_help_renders(kiln_env):
    """`--help` is the first thing a new user types: every command's must print, whatever its text holds."""
    import typer

    from kiln.cli import app

    names = sorted(typer.main.get_command(app).commands)
    assert {"optimize", "serve", "client", "inspect", "up"} <= set(names)
    for args in [[], *([name] for name in names)]:
        proc = run_kiln([*args, "--help"], kiln_env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr[-800:])
        assert "Usage:" in proc.stdout, args
    serving = subprocess.run([sys.executable, "-m", "kiln.serving", "--help"], capture_output=True, text=True)
    assert serving.returncode == 0 and "usage:" in serving.stdout


def _with_data(prog: Path, **changes) -> None:
    data = dict(np.load(prog / "digits.npz"))
    data.update(changes)
    np.savez(prog / "digits.npz", **data)


def test_labels_outside_the_classes(tmp_path, kiln_env, seeded_store, digits_program):
    """42 and -1 for 10 digits would count as wrong for every candidate alike: refused, naming the first."""
    prog = _program_copy(digits_program, tmp_path)
    labels = np.load(prog / "digits.npz")["y_test"].copy()
    labels[[7, 9]] = [42, -1]
    _with_data(prog, y_test=labels)
    expect_failure([str(prog)], kiln_env, seeded_store, "2 label(s) lie outside the 10 classes [0, 10)",
                   "'probabilities'", "the first is 42 (sample 7)")


def test_nonfinite_values_in_the_dataset(tmp_path, kiln_env, seeded_store, digits_program):
    prog = _program_copy(digits_program, tmp_path)
    x = np.load(prog / "digits.npz")["x_test"].copy()
    x[3, 5], x[11, 0] = np.nan, np.inf
    _with_data(prog, x_test=x)
    expect_failure([str(prog)], kiln_env, seeded_store, "input 'pixels' holds 2 NaN/Inf value(s), the first in "
                   "sample 3", "digits.npz")


def test_impossible_range_and_dataset_key_typo(tmp_path, kiln_env, seeded_store, digits_program):
    prog = _program_copy(digits_program, tmp_path)
    text = (prog / "program.py").read_text()
    (prog / "program.py").write_text(text.replace("metrics.agreement(at_least=0.99)",
                                                  "metrics.cosine(at_least=0.99, name='c'), "
                                                  "kiln.metrics.custom(lambda o: 1.0, name='x', at_least=0.9, "
                                                  "at_most=0.5)"))
    line = next(i for i, t in enumerate((prog / "program.py").read_text().splitlines(), 1) if "at_most=0.5" in t)
    expect_failure([str(prog)], kiln_env, seeded_store, "at_least 0.9 is above at_most 0.5: no value can pass",
                   f"program.py:{line}")
    (prog / "program.py").write_text(text.replace('inputs={"pixels": "x_test"}', 'inputs={"pixel": "x_test"}'))
    expect_failure([str(prog)], kiln_env, seeded_store, "maps ['pixel'], which the model does not have",
                   "the model's inputs are ['pixels']")


def test_declared_shape_too_large_and_graph_without_outputs(tmp_path, kiln_env, seeded_store, digits_program):
    expect_failure([str(digits_program / "model.onnx"), "--shape", f"pixels={2**40}x64"], kiln_env, seeded_store,
                   "over the 4 GiB limit", "'pixels' [1099511627776, 64] float32", "KILN_MAX_INPUT_MB")
    import onnx

    model = onnx.load(str(digits_program / "model.onnx"))
    del model.graph.output[:]
    onnx.save(model, str(tmp_path / "no-outputs.onnx"))
    expect_failure([str(tmp_path / "no-outputs.onnx"), "--shape", "pixels=1x64"], kiln_env, seeded_store,
                   "graph has no outputs")


def test_reference_that_gives_nan_is_named(tmp_path, kiln_env, seeded_store):
    """atanh on synthetic N(0, 1) inputs: onnxruntime itself gives NaN, so every candidate, the baseline included,
    would fail its ranges and the gate would say to widen them. kiln names the output and the first sample instead
    and asks for data inside the model's domain; with --data, the sample is named by its position in the file
    (sample 7 lies in the selection split after held-out samples, so a split-relative index would differ).
    A program that allows non-finite values is optimized: the same NaN on both sides agrees."""
    from kiln.artifact.specs import TensorSpec
    from kiln.program.datasets import synthetic

    model = onnx_models.unary(tmp_path / "atanh.onnx", "Atanh")
    x = synthetic([TensorSpec(name="x", dtype="float32", shape=[1, 4])], [], count=8).inputs["x"]
    outside = np.abs(x).reshape(8, -1) >= 1  # what kiln feeds the model: atanh is NaN/Inf there
    first, count = int(np.flatnonzero(outside.any(axis=1))[0]), int(outside.sum())
    out = expect_failure([str(model), "--candidates", "onnxruntime", "--trials", "0"], kiln_env, seeded_store,
                         f"output 'y' holds {count} NaN/Inf value(s), the first in sample {first}",
                         "gives NaN/Inf on the evaluation data (synthetic", "--data")
    assert "widen the ranges" not in out
    data = np.full((10, 1, 4), 0.5, np.float32)
    data[7, 0, [1, 3]] = [1.5, -2.0]
    np.savez(tmp_path / "data.npz", x=data)
    expect_failure([str(model), "--candidates", "onnxruntime", "--trials", "0", "--data", str(tmp_path / "data.npz")],
                   kiln_env, seeded_store, "output 'y' holds 2 NaN/Inf value(s), the first in sample 7", "data.npz",
                   "inside the model's domain")
    prog = tmp_path / "allowed"
    prog.mkdir()
    shutil.copy(model, prog / "model.onnx")
    (prog / "program.py").write_text("import kiln\n\nclass P(kiln.ModelProgram):\n    allow_nonfinite = True\n")
    proc = run_kiln(["optimize", str(prog), "--candidates", "onnxruntime", "--trials", "0", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    base = next(c for c in json.loads(proc.stdout)["candidates"] if c["name"] == "onnxruntime")
    assert base["metrics"]["cosine"]["value"] == 1.0 and base["metrics"]["max_rel_diff"]["value"] == 0.0


def test_an_example_without_its_built_model_names_how_to_build_it(tmp_path, kiln_env, seeded_store):
    """A fresh checkout has no examples/digits/model.onnx (git ignores it) until `make examples` has run: the
    error says so; an example the Makefile's target does not list names its own build script."""
    from kiln.program.user_code import _missing_model_hint

    checkout = tmp_path / "checkout"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "digits", checkout / "examples" / "digits",
                    ignore=shutil.ignore_patterns("model.onnx", "__pycache__"))
    (checkout / "Makefile").write_text("examples: examples/digits/model.onnx\n")
    expect_failure([str(checkout / "examples" / "digits")], kiln_env, seeded_store,
                   "model file 'model.onnx' not found in the program folder", "make examples", "train.py")

    (checkout / "examples" / "minilm").mkdir()
    (checkout / "examples" / "minilm" / "prepare.py").write_text("")
    hint = _missing_model_hint(checkout / "examples" / "minilm")
    assert "make examples" not in hint and "prepare.py" in hint
    assert "make examples" not in _missing_model_hint(tmp_path)  # no build script: the generic hint
