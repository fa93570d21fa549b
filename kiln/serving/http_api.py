"""The KServe v2 REST protocol and Prometheus metrics, on `--http-port` beside gRPC.

Routes (Triton's and KServe's paths, so tritonclient.http, KServe's clients and curl work unchanged):
`GET /v2/health/live|ready`, `GET /v2`, `GET /v2/models/NAME[/versions/V][/ready|/config|/stats]`,
`GET /v2/models/stats`, `POST /v2/repository/index`, `POST /v2/models/NAME[/versions/V]/infer` (JSON tensors,
or Triton's binary tensor extension: a JSON header of `Inference-Header-Content-Length` bytes followed by the
raw tensors) and `GET /metrics`. Served by uvicorn in the gRPC server's event loop, over the same `Inference`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kiln.serving import tensors
from kiln.serving.grpc_api import EXTENSIONS
from kiln.serving.model import Inference, Refused

log = logging.getLogger("kiln.serve")

STATUS = {"invalid": 400, "not_found": 404, "unavailable": 503, "unsupported": 501, "internal": 500}
HEADER_LENGTH = "Inference-Header-Content-Length"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)  # Triton's error body; tritonclient reads it


def routes(inference: Inference, requests, max_body: int) -> list[Route]:
    """Each endpoint answers through `inference`; refusals become status codes with `{"error": ...}`."""
    metrics = inference.metrics

    def endpoint(method: str, handler, methods=("GET",)):
        async def call(request: Request) -> Response:
            start = time.perf_counter()
            gauge = metrics.active
            gauge.inc()
            try:
                params = request.path_params
                inference.check_model(params.get("model", ""), params.get("version", ""))
                response = await handler(request)
            except Refused as exc:
                response = _error(STATUS[exc.kind], exc.message)
            except Exception as exc:  # a bug, not the client's fault: keep serving
                log.exception("internal error in %s", method)
                response = _error(500, f"internal error: {type(exc).__name__}: {exc}")
            finally:
                gauge.dec()
            status = response.status_code
            size = int(request.headers.get("content-length") or 0)
            seconds = time.perf_counter() - start
            requests.record(f"HTTP {method}", str(status), seconds * 1000, size,
                            f"{request.client.host}:{request.client.port}" if request.client else "")
            metrics.observe("http", method, str(status), seconds)
            return response

        return call, list(methods)

    async def live(request):
        return Response(status_code=200)

    async def ready(request):
        if not inference.ready:
            raise Refused("unavailable", "the model is still loading")
        return Response(status_code=200)

    async def server_metadata(request):
        return JSONResponse({"name": "kiln", "version": inference.manifest.versions.get("kiln", ""),
                             "extensions": EXTENSIONS})

    async def model_metadata(request):
        return JSONResponse(inference.metadata())

    async def model_config(request):
        return JSONResponse(inference.config())

    async def model_stats(request):
        return JSONResponse({"model_stats": [inference.statistics()]})

    async def repository_index(request):
        body = await request.body()
        ready_only = bool(body and json.loads(body).get("ready"))
        return JSONResponse([m for m in inference.index() if not ready_only or m["state"] == "READY"])

    async def infer(request):
        raw = await request.body()
        if len(raw) > max_body:
            raise Refused("invalid", f"request of {len(raw)} bytes is over the server's --max-message-mb")
        header, binary = _split(raw, request.headers.get(HEADER_LENGTH))
        m = inference.manifest

        def encode(outputs) -> Response:
            body, blobs = tensors.encode_rest_outputs(header, outputs)
            request_id = {"id": header["id"]} if "id" in header else {}
            body = {"model_name": m.name, "model_version": inference.version, **request_id, **body}
            text = json.dumps(body, separators=(",", ":")).encode()
            if not blobs:
                return Response(text, media_type="application/json")
            return Response(b"".join([text, *blobs]), media_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(text))})

        return await inference.infer(lambda: tensors.decode_rest_inputs(header, binary, m.inputs), encode)

    async def metrics_text(request):
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    model_paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    table = [("/v2/health/live", "ServerLive", live, ("GET",)),
             ("/v2/health/ready", "ServerReady", ready, ("GET",)),
             ("/v2", "ServerMetadata", server_metadata, ("GET",)),
             ("/v2/models/stats", "ModelStatistics", model_stats, ("GET",)),
             ("/v2/repository/index", "RepositoryIndex", repository_index, ("POST",)),
             ("/metrics", "Metrics", metrics_text, ("GET",))]
    for base in model_paths:
        table += [(base, "ModelMetadata", model_metadata, ("GET",)),
                  (f"{base}/ready", "ModelReady", ready, ("GET",)),
                  (f"{base}/config", "ModelConfig", model_config, ("GET",)),
                  (f"{base}/stats", "ModelStatistics", model_stats, ("GET",)),
                  (f"{base}/infer", "ModelInfer", infer, ("POST",))]
    out = []
    for path, method, handler, methods in table:
        call, allowed = endpoint(method, handler, methods)
        out.append(Route(path, call, methods=allowed))
    return out


def _split(raw: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header and the binary tail of a request (Triton's binary tensor extension)."""
    try:
        n = int(header_length) if header_length is not None else len(raw)
    except ValueError:
        raise Refused("invalid", f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
    if not 0 <= n <= len(raw):
        raise Refused("invalid", f"{HEADER_LENGTH} is {n}, but the body has {len(raw)} bytes")
    try:
        header = json.loads(raw[:n])
    except ValueError as exc:
        raise Refused("invalid", f"the request is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise Refused("invalid", "the request must be a JSON object with \"inputs\"")
    return header, memoryview(raw)[n:]


def app(inference: Inference, requests, max_body: int) -> Starlette:
    async def not_found(request: Request, exc: HTTPException) -> JSONResponse:
        what = f"{request.method} {request.url.path}"
        if exc.status_code == 405:
            return _error(405, f"{what}: method not allowed")
        return _error(exc.status_code, f"kiln does not serve {what} (it answers the v2 health, metadata, config, "
                                       "statistics, repository index and infer routes, and /metrics)")

    return Starlette(routes=routes(inference, requests, max_body), exception_handlers={404: not_found,
                                                                                       405: not_found})


class HttpServer:
    """uvicorn in the running event loop, on a socket bound by the caller."""

    def __init__(self, inference: Inference, requests, sock: socket.socket, max_body: int):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # kiln's own handlers stop gRPC and HTTP together
                yield

        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        config = uvicorn.Config(app(inference, requests, max_body), log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=10)
        self.server = Server(config)
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():  # failed to start: raise its error
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self, grace_s: float) -> None:
        self.server.config.timeout_graceful_shutdown = grace_s
        self.server.should_exit = True
        if self.task:
            await self.task
