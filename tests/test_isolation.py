"""User code and candidates run in child processes: a program that hangs, exits or crashes, and a candidate
that segfaults or hangs, are each reported for what they did; the run (or the next candidate) goes on, and
SIGTERM ends everything within seconds."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

import onnx_models
from conftest import BIN, ROOT, run_kiln, store_snapshot, wait_for


def program(tmp_path: Path, body: str) -> Path:
    prog = tmp_path / "prog"
    prog.mkdir()
    onnx_models.small_cnn(prog / "model.onnx", size=8)
    (prog / "program.py").write_text("import kiln\n" + body + "\n\nclass P(kiln.ModelProgram):\n    pass\n")
    return prog


@pytest.mark.parametrize("body, needle", [
    ("while True:\n    pass", "the program did not finish within 5 s"),
    ("import sys\nsys.exit(3)", "the program called sys.exit(3)"),
    ("import ctypes\nctypes.string_at(0)", "the program was killed by SIGSEGV"),
])
def test_a_program_that_hangs_exits_or_crashes_is_named(tmp_path, kiln_env, body, needle):
    prog = program(tmp_path, body)
    before = store_snapshot(Path(kiln_env["KILN_STORE"]))
    start = time.monotonic()
    proc = run_kiln(["optimize", str(prog), "--candidates", "onnxruntime"], {**kiln_env, "KILN_PROGRAM_TIMEOUT_S": "5"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - start < 120
    assert store_snapshot(Path(kiln_env["KILN_STORE"])) == before


def test_sigterm_ends_the_run_and_its_children_within_seconds(tmp_path, kiln_env):
    """A dataset loader that would take ten minutes: SIGTERM to `kiln optimize` ends it and every process
    it started within seconds."""
    marker = tmp_path / "loading"
    prog = program(tmp_path, "import time")
    (prog / "program.py").write_text((prog / "program.py").read_text().replace(
        "    pass", f"    dataset = kiln.Dataset(loader=lambda: (open({str(marker)!r}, 'w').close(), "
                   "time.sleep(600)))"))
    proc = subprocess.Popen([str(BIN / "kiln"), "optimize", str(prog), "--candidates", "onnxruntime"], cwd=ROOT,
                            env=kiln_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    me = psutil.Process(proc.pid)
    wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the dataset loader to start")
    assert proc.poll() is None, proc.communicate()[1]
    family = me.children(recursive=True)
    assert family, "no child process was started"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - start < 20, "took too long to stop"
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM received" in stderr and "Traceback" not in stderr

    def alive() -> list[int]:
        return [p.pid for p in family if _running(p)]

    wait_for(lambda: not alive(), 5, lambda: f"every child of `kiln optimize` to end after SIGTERM; left: {alive()}")


def _running(proc: psutil.Process) -> bool:
    """Whether `proc` still runs (a zombie has ended; it may be reaped between the two calls)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _library(tmp_path: Path, body: str) -> Path:
    src = tmp_path / "lib.c"
    src.write_text("#include <unistd.h>\n__attribute__((constructor)) static void on_load(void) { " + body + " }\n")
    out = tmp_path / f"lib{abs(hash(body))}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out


def test_a_candidate_that_segfaults_or_hangs_fails_alone(tmp_path, monkeypatch):
    """Compiled code that crashes the process or never returns: that candidate fails with the reason, the
    baseline and the others are measured as usual (kiln.optimize without Prefect)."""
    from kiln.optimize.build import build_candidates
    from kiln.optimize.evaluate import evaluate
    from kiln.optimize.models import BuiltCandidate
    from kiln.optimize.prepare import prepare
    from kiln.optimize.reference import reference
    from kiln.optimize.validate import validate

    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KILN_CANDIDATE_TIMEOUT_S", "20")
    model = onnx_models.small_cnn(tmp_path / "cnn.onnx", size=8)
    checked = validate(str(model), None, ["onnxruntime"])
    ref = reference(checked, threads=1)
    built = build_candidates(checked, prepare(checked), ref, ["onnxruntime", "ort-fp32-basic"])
    crash = BuiltCandidate(name="crash", backend="tvm", path=str(_library(tmp_path, "*(volatile int *)0 = 1;")))
    hang = BuiltCandidate(name="hang", backend="tvm", path=str(_library(tmp_path, "for (;;) pause();")))
    start = time.monotonic()
    evaluation = evaluate(checked, ref, [built[0], crash, hang, built[1]], threads=1, latency_repeats=20)
    by_name = {c.name: c for c in evaluation.candidates}
    assert by_name["crash"].reasons == ["failed to run: was killed by SIGSEGV"]
    assert by_name["hang"].reasons == ["failed to run: did not finish within 20 s"]
    assert by_name["onnxruntime"].passed and by_name["ort-fp32-basic"].passed  # measured as usual around them
    assert time.monotonic() - start < 90


def test_a_model_the_reference_cannot_run_on_the_data_is_a_model_error(tmp_path, monkeypatch):
    """Shapes only the data reveals (a Reshape target given as an input): a ModelError naming the data."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from kiln.errors import ModelError
    from kiln.optimize.reference import reference
    from kiln.optimize.validate import validate

    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    prog = tmp_path / "reshape"
    prog.mkdir()
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(prog / "model.onnx"))
    np.savez(prog / "data.npz", x=np.ones((1, 2, 3), np.float32), shape=np.array([[5, 5]], np.int64))
    (prog / "program.py").write_text("import kiln\n\nclass P(kiln.ModelProgram):\n"
                                     "    dataset = kiln.Dataset(path='data.npz')\n")
    checked = validate(str(prog), None, ["onnxruntime"])
    with pytest.raises(ModelError, match="onnxruntime cannot run the model on the data from data.npz"):
        reference(checked, threads=1)
