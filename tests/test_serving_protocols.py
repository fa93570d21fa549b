"""The ecosystem's clients against a live `kiln serve`: NVIDIA's tritonclient over gRPC and HTTP (every call
perf_analyzer and a Triton user make), plain HTTP as curl would send it, and Prometheus' /metrics."""

import queue
import re

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

import kiln

ROWS = 6


@pytest.fixture(scope="module")
def digits(digits_program, digits_artifact):
    x = np.load(digits_program / "digits.npz")["x_test"][:ROWS].astype(np.float32)
    local = kiln.load(digits_artifact)
    return x, [local.run({"pixels": row.reshape(1, 64)})["probabilities"] for row in x]


def _stats(client, grpc_side: bool) -> dict:
    """inference_stats as plain numbers, the same for both protocols."""
    if grpc_side:
        s = client.get_inference_statistics("digits").model_stats[0]
        return {"inference_count": s.inference_count, "success": s.inference_stats.success.count,
                "fail": s.inference_stats.fail.count, "compute_infer_ns": s.inference_stats.compute_infer.ns,
                "queue": s.inference_stats.queue.count}
    s = client.get_inference_statistics("digits")["model_stats"][0]
    st = s["inference_stats"]
    return {"inference_count": s["inference_count"], "success": st["success"]["count"], "fail": st["fail"]["count"],
            "compute_infer_ns": st["compute_infer"]["ns"], "queue": st["queue"]["count"]}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritonclient_every_call(digits_server, digits_artifact, digits, protocol):
    """What perf_analyzer asks first (the model config) and everything a Triton user calls, over both protocols,
    agreeing with kiln.load; the statistics count what was sent, failures included."""
    x, want = digits
    grpc_side = protocol == "grpc"
    mod = tgrpc if grpc_side else thttp
    client = mod.InferenceServerClient(digits_server.address if grpc_side else digits_server.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and not client.is_model_ready("other")
    meta = client.get_server_metadata()
    extensions = list(meta.extensions) if grpc_side else meta["extensions"]
    assert {"model_configuration", "statistics", "binary_tensor_data"} <= set(extensions)

    config = client.get_model_config("digits", as_json=True)["config"] if grpc_side else \
        client.get_model_config("digits")
    assert config["name"] == "digits" and config.get("max_batch_size", 0) == 0  # batch in dims, not by the server
    assert config["platform"].startswith("kiln_")
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == \
        [("pixels", "TYPE_FP32", [1, 64])]
    assert config["output"][0]["data_type"] == "TYPE_FP32" and config["instance_group"][0]["count"] == 2
    metadata = client.get_model_metadata("digits", as_json=True) if grpc_side else client.get_model_metadata("digits")
    # Triton's versions are numbers (perf_analyzer parses them so): the store's version, not the artifact id
    assert metadata["versions"] == [str(kiln.load(digits_artifact).manifest.version or 1)]
    assert client.is_model_ready("digits", metadata["versions"][0]) and not client.is_model_ready("digits", "99")

    before = _stats(client, grpc_side)
    for i, (row, expected) in enumerate(zip(x, want, strict=True)):
        binary = i % 2 == 0
        inp = mod.InferInput("pixels", [1, 64], "FP32")
        if grpc_side:
            inp.set_data_from_numpy(row.reshape(1, 64))
            out = [mod.InferRequestedOutput("probabilities")]
        else:  # JSON tensors and the binary extension, both ways
            inp.set_data_from_numpy(row.reshape(1, 64), binary_data=binary)
            out = [mod.InferRequestedOutput("probabilities", binary_data=not binary)]
        result = client.infer("digits", [inp], outputs=out, request_id="r-7")
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
        response = result.get_response(as_json=True) if grpc_side else result.get_response()
        assert response["id"] == "r-7"
    bad = mod.InferInput("pixels", [1, 63], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 63\], expected \[1, 64\]"):
        client.infer("digits", [bad])
    with pytest.raises(InferenceServerException, match="no model 'other'"):
        client.get_model_config("other")
    after = _stats(client, grpc_side)
    assert after["inference_count"] - before["inference_count"] == ROWS
    assert after["success"] - before["success"] == ROWS and after["fail"] - before["fail"] == 1
    assert after["compute_infer_ns"] > before["compute_infer_ns"] and after["queue"] > before["queue"]

    models = client.get_model_repository_index(as_json=True)["models"] if grpc_side else \
        client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in models] == [("digits", "READY")]
    client.close()


def test_grpc_stream_infer(digits_server, digits):
    """Triton's bidirectional stream: answers in order; a bad request answers with an error and the stream
    goes on."""
    x, want = digits
    answers: queue.Queue = queue.Queue()
    client = tgrpc.InferenceServerClient(digits_server.address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i, row in enumerate(x[:3]):
        inp = tgrpc.InferInput("pixels", [1, 64], "FP32")
        inp.set_data_from_numpy(row.reshape(1, 64))
        client.async_stream_infer("digits", [inp], request_id=str(i))
        if i == 1:
            bad = tgrpc.InferInput("pixels", [1, 64], "INT64")
            bad.set_data_from_numpy(np.zeros((1, 64), np.int64))
            client.async_stream_infer("digits", [bad], request_id="bad")
    got = [answers.get(timeout=30) for _ in range(4)]
    client.stop_stream()
    client.close()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "the model expects FP32" in str(errors[0])
    results = [r for r, e in got if e is None]
    assert [r.get_response().id for r in results] == ["0", "1", "2"]
    for r, expected in zip(results, want, strict=False):
        np.testing.assert_allclose(r.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)


def test_plain_http_as_curl_sends_it(digits_server, digits):
    """JSON in, JSON out, no client library; mistakes get a status and a JSON error that says what is wrong."""
    x, want = digits
    base = f"http://{digits_server.http}"
    body = {"id": "c1", "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                    "data": x[0].reshape(8, 8).tolist()}]}  # nested lists are fine
    r = httpx.post(f"{base}/v2/models/digits/infer", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "c1" and out["probabilities"]["shape"] == [1, 10]
    np.testing.assert_allclose(np.asarray(out["probabilities"]["data"]).reshape(1, 10), want[0], rtol=1e-6,
                               atol=1e-7)
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/digits").json()["inputs"][0]["shape"] == [1, 64]
    cases = [(httpx.post, "/v2/models/digits/infer", {"content": b"{not json"}, 400, "not JSON"),
             (httpx.post, "/v2/models/digits/infer", {"json": {"inputs": []}}, 400, "no \"inputs\" list"),
             (httpx.post, "/v2/models/digits/infer",
              {"json": {"inputs": [{**body["inputs"][0], "data": [1.0] * 63}]}}, 400, "63 values in data"),
             (httpx.post, "/v2/models/other/infer", {"json": body}, 404, "no model 'other'"),
             (httpx.get, "/v2/models/digits/infer", {}, 405, "method not allowed"),
             (httpx.post, "/v2/repository/models/digits/load", {}, 404, "kiln does not serve")]
    for call, path, kwargs, status, message in cases:
        r = call(f"{base}{path}", **kwargs)
        assert r.status_code == status and message in r.json()["error"], (path, r.status_code, r.text)
    assert digits_server.proc.poll() is None


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m[1] for k, v in labels.items()):
            total += float(m[2])
    return total


def test_metrics_move_with_the_requests(digits_server, digits):
    """/metrics in Prometheus' text format: requests by protocol, method and code, the latency histogram and the
    in-flight gauge, for gRPC and HTTP calls alike."""
    x, _ = digits
    url = f"http://{digits_server.http}/metrics"
    first = httpx.get(url)
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
    grpc_client = tgrpc.InferenceServerClient(digits_server.address)
    inp = tgrpc.InferInput("pixels", [1, 64], "FP32")
    inp.set_data_from_numpy(x[0].reshape(1, 64))
    for _ in range(3):
        grpc_client.infer("digits", [inp])
    grpc_client.close()
    httpx.post(f"http://{digits_server.http}/v2/models/digits/infer", content=b"[]")  # a 400
    text = httpx.get(url).text
    grpc_ok = dict(protocol="grpc", method="ModelInfer", code="OK")
    assert _metric(text, "kiln_requests_total", **grpc_ok) - _metric(first.text, "kiln_requests_total", **grpc_ok) == 3
    bad = dict(protocol="http", method="ModelInfer", code="400")
    assert _metric(text, "kiln_requests_total", **bad) - _metric(first.text, "kiln_requests_total", **bad) == 1
    count = "kiln_request_duration_seconds_count"
    assert _metric(text, count, protocol="grpc", method="ModelInfer") >= 3
    assert _metric(text, "kiln_request_duration_seconds_bucket", protocol="grpc", method="ModelInfer", le="+Inf") >= 3
    assert _metric(text, "kiln_inferences_total", model="digits") >= 3
    assert "kiln_requests_in_flight{" in text
