"""A device (kiln.device): TVM's RPC server on the target machine, registered with TVM's own tracker under a key,
serving kiln's functions: it describes itself (CPU flags, the cores in its affinity mask, versions) and times
uploaded candidates in interleaved rounds, returning their outputs. Loopback only."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import pytest

import onnx_models
from conftest import BIN, ROOT, device_registered, free_port, run_kiln, start_device, stop_device, wait_for


def test_a_device_registers_describes_itself_times_candidates_and_stops_cleanly(rpc_tracker, tmp_path):
    from tvm import rpc

    from kiln.device.client import Session, devices
    from kiln.errors import DeviceError

    host, port = tracker = rpc_tracker
    # TVM's runtime library only, as in the runtime image (no compiler, none of its contrib functions)
    device = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "kiln.device", "--tracker",
                               f"{host}:{port}", "--key", "edge1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    try:
        client = rpc.connect_tracker(host, port)
        wait_for(lambda: devices(client, "edge1"), 60, "edge1 in the tracker's list")
        served = psutil.Process(device.pid).children(recursive=True)  # the RPC server process (and sessions)
        assert served

        session = Session(tracker, "edge1", timeout=30)
        about = session.describe()
        import tvm

        assert about["cores"] == 1 and "sse2" in about["flags"] and about["flags_from"] == "cpuid"
        assert about["versions"]["tvm"] == tvm.__version__ and about["versions"]["onnxruntime"] == ort.__version__

        model = onnx_models.small_cnn(tmp_path / "cnn.onnx", size=16)
        feeds = [{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16), dtype=np.float32)}
                 for i in range(3)]
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(b"not a model")
        local = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        out_name = local.get_outputs()[0].name
        answer, outputs = session.measure(
            [{"name": "onnxruntime", "backend": "onnxruntime", "path": str(model), "settings": {"threads": 1}},
             {"name": "broken", "backend": "onnxruntime", "path": str(broken), "settings": {"threads": 1}}],
            feeds, inputs=[{"name": "x", "dtype": "float32", "shape": [1, 3, 16, 16]}],
            outputs=[{"name": out_name, "dtype": "float32", "shape": [1, 10]}], timed=[0, 1], repeats=20,
            seconds=1.0)
        assert "broken" in answer["failed"] and answer["cores"] == 1  # named, and the others timed without it
        rounds, per_input = answer["rounds"]["onnxruntime"], answer["per_input"]["onnxruntime"]
        assert len(rounds) == 10 and all(t > 0 for r in rounds for t in r)  # kiln's rounds, each timed call
        assert len(per_input) == 2 and len(per_input[0]) >= sum(map(len, rounds))  # passes through 2 inputs
        for i, feed in enumerate(feeds):
            np.testing.assert_allclose(outputs[f"onnxruntime/{i}/{out_name}"], local.run(None, feed)[0],
                                       rtol=1e-5, atol=1e-5)
        assert session.describe()["served"]["measurements"] == 1
        # what MetaSchedule's RPCRunner calls there before timing a trial, which the runtime library lacks
        arg = tvm.runtime.empty((64,), "float32", session.remote.cpu())
        session.remote.get_function("tvm.contrib.random.random_fill_for_measure")(arg)
        assert 0 < np.abs(arg.numpy()).max() <= 0.5  # kiln's trial inputs, as its local runner makes them

        with pytest.raises(DeviceError, match="no device under the key 'nobody' at the tracker 127.0.0.1") as err:
            Session(tracker, "nobody", timeout=5)
        assert "python -m kiln.device --tracker" in err.value.hint

        del session
        device.send_signal(signal.SIGTERM)
        assert device.wait(30) == 0, device.stderr.read()
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in served), 10,
                 "the device's RPC server processes to end")
        wait_for(lambda: not devices(rpc.connect_tracker(host, port), "edge1"), 30, "edge1 to leave the tracker")
    finally:
        if device.poll() is None:
            device.kill()


def test_a_device_without_its_tracker_says_so():
    """A tracker that is not there: exit 2 at once with the address and how to start one (TVM's server alone
    would retry in a thread for a minute and then serve no one)."""
    proc = subprocess.run([sys.executable, "-m", "kiln.device", "--tracker", f"127.0.0.1:{free_port()}", "--key", "k"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot reach the RPC tracker at 127.0.0.1:" in proc.stderr, proc.stderr
    assert "kiln tracker --host 127.0.0.1" in proc.stderr and "Traceback" not in proc.stderr


def test_optimize_on_a_device_times_everything_there_and_says_so(rpc_tracker, digits_program, kiln_env):
    """The bar target-device: a device pinned to one core; `kiln optimize --device edge1@TRACKER` tunes TVM's
    trials and times every candidate there, and the manifest says so (key, 1 core, what it measured). With the
    device stopped, the same command stops with exit 2 naming the key, within 120 s, without a traceback."""
    from kiln.device.client import Session

    host, port = rpc_tracker
    device = start_device(rpc_tracker, "edge1", "1")
    command = ["optimize", str(digits_program), "--device", f"edge1@{host}:{port}", "--candidates", "onnxruntime,tvm",
               "--trials", "8", "--json"]
    try:
        device_registered(rpc_tracker, "edge1")
        proc = run_kiln(command, kiln_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        manifest = json.loads(proc.stdout)
        about = manifest["device"]
        assert about["key"] == "edge1" and about["tracker"] == f"{host}:{port}" and about["cores"] == 1
        assert about["versions"]["tvm"] and "sse2" in about["flags"] and "device" in about["timings"]
        tuning = manifest["tuning"]  # the tvm row's search: its trials timed on the device, for its one core
        assert tuning["measured_on"] == f"edge1@{host}:{port}" and tuning["target"]["num-cores"] == 1
        assert about["measurements"]["trials"] == tuning["trials_run"] > 0
        assert about["measurements"]["rounds"] > 0
        if manifest["confirmation"]:  # the winner's confirmation rounds ran there too
            assert manifest["confirmation"]["device_rounds"] > 0
        build = manifest["builds"][0]
        assert build["target"]["cores"] == 1 and "on the device edge1" in build["judged"]
        session = Session(rpc_tracker, "edge1", timeout=30)  # the device served those rounds, not this host
        assert session.describe()["served"]["measurements"] >= 1
        session.close()
    finally:
        stop_device(device)
    start = time.monotonic()
    proc = run_kiln(command, kiln_env, timeout=150)
    assert proc.returncode == 2 and time.monotonic() - start < 120, proc.stderr[-2000:]
    assert "no device under the key 'edge1'" in proc.stderr and f"{host}:{port}" in proc.stderr
    assert "python -m kiln.device --tracker" in proc.stderr and "Traceback" not in proc.stderr


def test_a_device_lost_mid_tuning_fails_its_trials_and_the_run_ends_on_another(rpc_tracker, digits_program,
                                                                               kiln_env):
    """Two devices under one key measure trials in parallel; one is killed (SIGKILL, its sessions with it) while
    it serves a trial: that trial counts as failed, the search and the timing rounds go on on the other."""
    host, port = rpc_tracker
    doomed, spare = start_device(rpc_tracker, "pool", "0"), start_device(rpc_tracker, "pool", "1")
    try:
        device_registered(rpc_tracker, "pool", 2)
        run = subprocess.Popen([str(BIN / "kiln"), "optimize", str(digits_program), "--device",
                                f"pool@{host}:{port}", "--candidates", "onnxruntime,tvm", "--trials", "32", "--json"],
                               env=kiln_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        seen: set[int] = set()

        def serving_a_trial() -> bool:  # its second session: the plan's describe is at most the first
            try:
                seen.update(p.pid for p in psutil.Process(doomed.pid).children(recursive=True)[1:])
            except psutil.NoSuchProcess:
                pass
            return len(seen) >= 2 or run.poll() is not None
        wait_for(serving_a_trial, 300, "the first device to serve trials", interval=0.02)
        assert run.poll() is None, "the run ended before a device could be lost"
        os.killpg(doomed.pid, signal.SIGKILL)
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        manifest = json.loads(out)
        tuning = manifest["tuning"]
        assert tuning["device_failed_trials"] >= 1 and tuning["failed_trials"] >= tuning["device_failed_trials"]
        assert any("failed on the device side" in w for w in tuning["warnings"]), tuning["warnings"]
        assert manifest["device"]["devices"] == 2 and manifest["device"]["measurements"]["rounds"] > 0
        assert tuning["trials_run"] > tuning["failed_trials"]  # the other device measured the rest
    finally:
        stop_device(doomed, signal.SIGKILL)
        stop_device(spare)


def test_a_device_with_other_versions_is_refused(rpc_tracker, digits_program, kiln_env, tmp_path):
    """A device whose onnxruntime is not the optimizer's would time other kernels than what ships: refused at the
    start, by name. (The device's process reports another version through a sitecustomize it imports first.)"""
    (tmp_path / "sitecustomize.py").write_text(
        "import kiln.device.functions as f\n_versions = f.versions\n"
        "f.versions = lambda: {**_versions(), 'onnxruntime': '1.0.0'}\n")
    host, port = rpc_tracker
    device = start_device(rpc_tracker, "old", "1", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    try:
        device_registered(rpc_tracker, "old")
        proc = run_kiln(["optimize", str(digits_program), "--device", f"old@{host}:{port}", "--candidates",
                         "onnxruntime,tvm", "--trials", "8"], kiln_env)
    finally:
        stop_device(device)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"the device under 'old' at the tracker {host}:{port} runs onnxruntime 1.0.0 (this optimizer: " \
           f"{ort.__version__})" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("fields, said", [
    ({"device": "edge1"}, "device 'edge1' is not KEY@HOST:PORT"),
    ({"device": "edge1@127.0.0.1"}, "is not HOST:PORT"),
    ({"device": "edge1@127.0.0.1:9190", "targets": ["x86-64-v3"]}, "the target is the device's own CPU"),
])
def test_a_device_request_is_checked(fields, said):
    from kiln.errors import KilnError
    from kiln.optimize.request import OptimizeRequest

    with pytest.raises(KilnError, match=said):
        OptimizeRequest.of(program="examples/digits", **fields)


def test_a_reoptimization_measures_on_the_same_device():
    """A version optimized on a device records it in its request: a scheduled re-optimization asks the same key
    (told other targets, it builds for them instead, without the device)."""
    from test_targets import OLD

    from flows.reoptimize import request_for
    from kiln.artifact.manifest import Manifest

    on_device = Manifest.model_validate({**OLD, "request": {"program": "m.onnx", "device": "edge1@127.0.0.1:9190"}})
    assert request_for(Path("/a"), on_device, "/a/program").device == "edge1@127.0.0.1:9190"
    elsewhere = request_for(Path("/a"), on_device, "/a/program", targets=["znver4"])
    assert elsewhere.device is None and elsewhere.targets == ["znver4"]


def test_kiln_tracker_stops_whole_on_sigterm():
    """`kiln tracker`: TVM's tracker serves from a child process; SIGTERM to kiln's pid alone stops both."""
    import socket

    port = free_port()
    proc = subprocess.Popen([str(BIN / "kiln"), "tracker", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(up, 60, "the tracker's port")
        served = psutil.Process(proc.pid).children(recursive=True)
        assert served
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in served), 10,
                 "the tracker's processes to end")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_build_this_host_cannot_run_is_judged_on_the_device(rpc_tracker, tmp_path, kiln_home, monkeypatch):
    """On a host without AVX2 (this CPU's flags cut down to an x86-64-v2 one's here: the stages run in this
    process), a TVM build for the device's CPU cannot run here: its accuracy is judged on the outputs the device
    sends back and its speed is timed there, so it can be selected and confirmed (held-out samples on the device)."""
    from kiln.artifact.manifest import BASELINE
    from kiln.compiler.targets import resolve
    from kiln.device.client import Session
    from kiln.optimize import build, compile, confirm, evaluate, judging, prepare, reference, validate
    from kiln.optimize import plan as planning
    from kiln.optimize.request import OptimizeRequest
    from kiln.runtime import cpu_flags

    v2 = cpu_flags.CpuFlags(frozenset(resolve("x86-64-v2").requires), "cpuid")
    monkeypatch.setattr(judging, "this_cpu", lambda: v2)
    monkeypatch.setenv("KILN_HOME", str(kiln_home))
    host, port = rpc_tracker
    device = start_device(rpc_tracker, "above", "1")
    try:
        device_registered(rpc_tracker, "above")
        model = onnx_models.small_cnn(tmp_path / "cnn.onnx", size=16)
        request = OptimizeRequest(program=str(model), candidates=[BASELINE, "tvm"], trials=0, select="tvm",
                                  device=f"above@{host}:{port}", latency_repeats=20, store=str(tmp_path / "store"),
                                  compare_with_current=False)
        checked = validate.validate(request.program, request.shapes, request.chosen, request.name)
        [plan] = planning.plans(request, checked)
        assert "avx2" in plan.judging.lacking and plan.target.measured_on == f"above@{host}:{port}"
        prepared = prepare.prepare(checked)
        ref = reference.reference(checked, plan.threads, plan.calibrate)
        built = build.build_candidates(checked, prepared, ref, plan.transforms, target=plan.target)
        built.append(compile.compile_tvm(checked, compile.job(checked, prepared, plan, "tvm", None), plan))
        assert built[-1].judge_on_device and built[-1].error is None
        evaluation = evaluate.evaluate(checked, ref, built, plan.threads, 20, device=plan.device)
        tvm = next(c for c in evaluation.candidates if c.name == "tvm")
        assert tvm.metrics and tvm.passed and tvm.latency_ms is not None, tvm.reasons  # ran there, timed there
        choice = confirm.choose(checked, ref, evaluation, plan)  # --select tvm: confirmed on the device
        assert choice.selected.name == "tvm" and choice.confirmation.device_rounds > 0
        if choice.confirmation.held_out_samples:
            assert choice.confirmation.held_out_passed
        session = Session(rpc_tracker, "above", timeout=30)
        assert session.describe()["served"]["measurements"] >= 3  # accuracy, rounds, held-out accuracy, rounds
        session.close()
    finally:
        stop_device(device)
