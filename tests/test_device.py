"""A device (kiln.device): TVM's RPC server on the target machine, registered with TVM's own tracker under a key,
serving kiln's functions: it describes itself (CPU flags, the cores in its affinity mask, versions) and times
uploaded candidates in interleaved rounds, returning their outputs. Loopback only."""

import os
import signal
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import psutil
import pytest

import onnx_models
from conftest import free_port, wait_for


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
