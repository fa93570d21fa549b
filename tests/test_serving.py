"""A real `kiln serve` on loopback, called through the generated client, a plain v2 stub, health and
reflection; every bad input is sent to the live server, which must keep serving."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import kiln
from kiln.client import connect

from conftest import BIN, ROOT, Served, wait_for


def healthy(address: str, service: str = "") -> bool:
    with grpc.insecure_channel(address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_generated_client_matches_load(digits_server, digits_artifact, digits_program):
    x = np.load(digits_program / "digits.npz")["x_test"][:25]
    local = kiln.load(digits_artifact)
    with connect(digits_server.address, artifact=digits_artifact) as client:
        for row in x:
            reply = client.predict(pixels=row.tolist())
            want = local.run({"pixels": row.reshape(1, 64)})["probabilities"][0]
            np.testing.assert_allclose(reply.probabilities, want, rtol=1e-6, atol=1e-7)
            assert reply.label == int(want.argmax())
        stream = list(client.predict_stream(client.Request(pixels=row.tolist()) for row in x[:5]))
        assert [r.label for r in stream] == [int(local.run({"pixels": r.reshape(1, 64)})["probabilities"].argmax())
                                            for r in x[:5]]


PLAIN_V2_CLIENT = """
import json, sys
import grpc, numpy as np
sys.path.insert(0, sys.argv[1])
import inference_v2_pb2 as pb, inference_v2_pb2_grpc as g
rows = np.asarray(json.loads(sys.argv[3]), np.float32)
out = {}
with grpc.insecure_channel(sys.argv[2]) as ch:
    stub = g.GRPCInferenceServiceStub(ch)
    out["live"] = stub.ServerLive(pb.ServerLiveRequest()).live
    out["ready"] = stub.ServerReady(pb.ServerReadyRequest()).ready
    out["model_ready"] = stub.ModelReady(pb.ModelReadyRequest(name="digits")).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
    out["inputs"] = [[t.name, t.datatype, list(t.shape)] for t in meta.inputs]
    out["probabilities"] = []
    for row in rows:
        tensor = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, 64])
        tensor.contents.fp32_contents.extend(row.tolist())  # typed contents, not raw
        reply = stub.ModelInfer(pb.ModelInferRequest(model_name="digits", inputs=[tensor], id="req-1"))
        assert reply.id == "req-1" and reply.outputs[0].name == "probabilities"
        out["probabilities"].append(np.frombuffer(reply.raw_output_contents[0], "<f4").tolist())
    try:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="other"))
    except grpc.RpcError as e:
        out["unknown_model"] = e.code().name
print(json.dumps(out))
"""


def test_plain_v2_stub(digits_server, digits_artifact, digits_program, tmp_path):
    """The v2 protocol compiled independently of kiln, used from a separate process as an outside client."""
    from grpc_tools import protoc

    proto = ROOT / "proto_templates" / "inference_v2.proto"
    assert protoc.main(["protoc", f"-I{proto.parent}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                        proto.name]) == 0
    x = np.load(digits_program / "digits.npz")["x_test"][:3]
    proc = subprocess.run([sys.executable, "-c", PLAIN_V2_CLIENT, str(tmp_path), digits_server.address,
                           json.dumps(x.tolist())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["live"] and out["ready"] and out["model_ready"] and out["unknown_model"] == "NOT_FOUND"
    assert out["inputs"] == [["pixels", "FP32", [1, 64]]]
    local = kiln.load(digits_artifact)
    for row, got in zip(x, out["probabilities"], strict=True):
        want = local.run({"pixels": row.reshape(1, 64)})["probabilities"][0]
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_health_and_reflection(digits_server):
    assert healthy(digits_server.address) and healthy(digits_server.address, "kiln.Model")
    assert healthy(digits_server.address, "inference.GRPCInferenceService")
    with grpc.insecure_channel(digits_server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
    assert {"kiln.Model", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    with connect(digits_server.address) as client:  # message classes from reflection alone
        assert client.Request.DESCRIPTOR.full_name == "digits.DigitsRequest"
        assert 0 <= client.predict(pixels=[0.0] * 64).label <= 9


def _status(call, *args):
    with pytest.raises(grpc.RpcError) as exc:
        call(*args)
    return exc.value.code(), exc.value.details()


def test_bad_inputs_get_clear_statuses(digits_server, digits_artifact):
    address = digits_server.address
    with connect(address, artifact=digits_artifact) as client:
        raw = client.channel.unary_unary("/kiln.Model/Predict")
        code, msg = _status(raw, b"\xff\xff\xff\xff")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed request" in msg and "DigitsRequest" in msg
        wrong = client.Response(label=3, probabilities=[0.1] * 10).SerializeToString()  # another message type
        code, msg = _status(raw, wrong)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "right message type" in msg
        code, msg = _status(client.predict)  # missing fields: no pixels
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "cannot map the request" in msg
        code, msg = _status(client.infer, {"pixels": np.zeros((1, 63), np.float32)})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'pixels' has shape [1, 63], expected [1, 64]" in msg
        code, msg = _status(client.infer, {"pixels": np.zeros((1, 64), np.int64)})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "datatype INT64, the model expects FP32" in msg
        code, msg = _status(client.infer, {"nope": np.zeros((1, 64), np.float32)})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown input 'nope'" in msg
        poisoned = np.zeros((1, 64), np.float32)
        poisoned[0, 5], poisoned[0, 9] = np.nan, np.inf
        code, msg = _status(client.infer, {"pixels": poisoned})  # NaN in, NaN probabilities and label 0 out: no
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'pixels' holds 2 NaN/Inf value(s)" in msg, msg
        assert "at index [0, 5]" in msg
        code, msg = _status(client.predict, client.Request(pixels=[0.0] * 5 + [float("nan")] + [0.0] * 58))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'pixels' holds 1 NaN/Inf value(s)" in msg, msg
        code, msg = _status(client.predict, client.Request(pixels=[0.0] * (300 * 1024)))  # > --max-message-mb 1
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert healthy(address) and digits_server.proc.poll() is None


def test_client_disconnect_mid_stream_and_burst(digits_server, digits_artifact, digits_program):
    x = np.load(digits_program / "digits.npz")["x_test"]
    with connect(digits_server.address, artifact=digits_artifact) as client:
        def endless():
            i = 0
            while True:
                yield client.Request(pixels=x[i % len(x)].tolist())
                i += 1

        call = client.predict_stream(endless())
        for _, _reply in zip(range(20), call, strict=False):
            pass
        call.cancel()  # the client walks away mid-stream
        local = kiln.load(digits_artifact)
        want = [int(local.run({"pixels": r.reshape(1, 64)})["probabilities"].argmax()) for r in x[:200]]
        with ThreadPoolExecutor(32) as pool:  # a burst of concurrent calls
            got = list(pool.map(lambda r: client.predict(pixels=r.tolist()).label, x[:200]))
        assert got == want
    assert healthy(digits_server.address) and digits_server.proc.poll() is None

    def predict_logged() -> bool:  # request lines are written in batches every 0.5 s
        lines = [json.loads(line) for line in digits_server.logs().splitlines() if line.startswith('{"method"')]
        return any(entry["method"] == "Predict" and entry["code"] == "OK" and entry["ms"] > 0 for entry in lines)

    wait_for(predict_logged, 30, "a Predict request line with code OK in the server's log")


def test_out_of_range_indices_never_reach_compiled_code(embed_tvm_artifact):
    folder, _ = embed_tvm_artifact
    served = Served(folder)
    try:
        maps = Path(f"/proc/{served.proc.pid}/maps").read_text()
        assert "libtvm_runtime" in maps and "libtvm_compiler" not in maps  # the runtime alone serves
        with connect(served.address) as client:
            assert client.Request is None  # generic tensor protocol only
            ok = client.infer({"ids": np.array([[0, 1, 2, 49, -50, 3]], np.int64)})
            assert ok["pooled"].shape == (1, 8)
            for bad in (50, -51, 10**9):
                code, msg = _status(client.infer, {"ids": np.array([[0, 1, 2, 3, 4, bad]], np.int64)})
                assert code == grpc.StatusCode.INVALID_ARGUMENT and "valid range is [-50, 50)" in msg
        assert healthy(served.address) and served.proc.poll() is None
    finally:
        assert served.stop() == 0


def _slow_copy(artifact: Path, dest: Path, seconds: float, started: Path) -> Path:
    """The artifact with mapping code that creates the file `started`, then takes `seconds`, when the first
    pixel is 7 (hashes recomputed), so a call is certainly in flight when the server is told to stop."""
    from kiln.artifact.manifest import Manifest
    from kiln.fs import tree_files

    shutil.copytree(artifact, dest)
    program = dest / "program" / "program.py"
    program.write_text(program.read_text().replace(
        "        pixels = np.asarray(request.pixels, dtype=np.float32)\n",
        "        pixels = np.asarray(request.pixels, dtype=np.float32)\n"
        f"        if pixels[0] == 7.0:\n            __import__('pathlib').Path({str(started)!r}).touch()\n"
        f"            __import__('time').sleep({seconds})\n"))
    manifest = Manifest.read(dest)
    manifest.files = {k: v for k, v in tree_files(dest).items() if k != "manifest.json"}
    manifest.write(dest)
    return dest


def test_graceful_shutdown_drains_and_exits_zero(digits_artifact, tmp_path):
    """SIGTERM while a call is in flight: that call completes with its answer, then the server exits 0."""
    started = tmp_path / "call-started"
    served = Served(_slow_copy(digits_artifact, tmp_path / "slow", 3.0, started))
    answers, errors = [], []

    def caller():
        try:
            with connect(served.address, artifact=digits_artifact) as client:
                answers.append(client.predict(pixels=[7.0] + [1.0] * 63))
        except grpc.RpcError as exc:
            errors.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    wait_for(lambda: started.exists() or errors, 60, "the call to reach the slow mapping code")
    assert not errors, errors
    signalled = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert served.proc.wait(timeout=30) == 0
    assert not errors and len(answers) == 1, errors  # the in-flight call got its answer, not an error
    assert len(answers[0].probabilities) == 10 and 0 <= answers[0].label < 10
    assert time.monotonic() - signalled >= 1.0  # the server waited for it instead of cutting it off
    assert '"event": "stopped"' in served.logs()


def test_cli_client_sends_json(digits_server, digits_artifact):
    proc = subprocess.run([str(BIN / "kiln"), "client", str(digits_artifact), "--address", digits_server.address,
                           "--request", str(ROOT / "examples" / "digits" / "request.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["label"] == 0 and len(reply["probabilities"]) == 10


def test_cli_client_without_server(digits_artifact):
    env = {**os.environ}
    proc = subprocess.run([str(BIN / "kiln"), "client", str(digits_artifact), "--address", "127.0.0.1:9",
                           "--request", str(ROOT / "examples" / "digits" / "request.json")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    # what the user sees: which address did not answer, how to start a server there, and no half reply on stdout
    assert "no kiln server answers at 127.0.0.1:9" in proc.stderr and "kiln serve" in proc.stderr, proc.stderr
    assert proc.stdout == ""
