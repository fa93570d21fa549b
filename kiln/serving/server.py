"""`kiln serve`: one artifact behind gRPC and HTTP.

Lifecycle like Triton's python backend: initialize (load N runners, import the program's mapping code and the
generated protocol, warm up; health NOT_SERVING and readiness false until then), execute (kiln.serving.model:
validate, map, run, map back), finalize (SIGTERM: NOT_SERVING, drain in-flight calls, stop). gRPC runs on
grpc.aio and the REST routes and /metrics on uvicorn, both in the one event loop and over the same model
instances, statistics and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kiln.artifact.layout import PROTOCOL_DIR
from kiln.artifact.manifest import Manifest
from kiln.artifact.store import resolve
from kiln.errors import KilnError
from kiln.serving import protocol as protocols
from kiln.serving.batching import BatchingConfig
from kiln.serving.grpc_api import Handlers
from kiln.serving.model import Inference, ModelService
from kiln.serving.model_config import batch_dim

log = logging.getLogger("kiln.serve")


def _listen(host: str, port: int) -> socket.socket:
    """The HTTP port's socket, bound here so that port 0 gives a free port we can print."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise KilnError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}",
                        hint="choose another --http-port (0: any free port; -1: no HTTP)") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _serve(artifact: str, host: str, port: int, workers: int, max_message_mb: float, threads: int | None,
                 grace_s: float, log_requests: bool, http_port: int | None, batching: BatchingConfig) -> None:
    limit = int(max_message_mb * (1 << 20))
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit), ("grpc.so_reuseport", 0)])
    folder = resolve(artifact)
    manifest = Manifest.read(folder)  # once per process: every part below is handed this one
    batching = batching.checked(manifest, batch_dim(manifest))  # a model that cannot batch stops here
    inference = Inference(manifest)
    requests = RequestLog(enabled=log_requests)
    handlers = Handlers(inference, protocols.load(folder / PROTOCOL_DIR, manifest.protocol, own_pool=False),
                        requests)  # in the process-wide pool: reflection serves its descriptors
    flusher = asyncio.ensure_future(requests.run())
    server.add_generic_rpc_handlers(handlers.generic_handlers())
    served = [protocols.V2_SERVICE_NAME] + ([protocols.SERVICE_NAME] if handlers.protocol.service else [])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *served]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection([*served, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise KilnError(f"cannot listen on {host}:{port}", hint="choose another --port")
    http = None
    if http_port is not None:
        from kiln.serving.http_api import HttpServer

        http = HttpServer(inference, requests, _listen(host, http_port), max_body=limit)
        await http.start()
    await server.start()  # health answers NOT_SERVING while the model loads and warms up
    loop = asyncio.get_running_loop()
    service = await loop.run_in_executor(None, lambda: ModelService(folder, manifest, workers=workers,
                                                                    threads=threads))
    await loop.run_in_executor(None, service.warm_up)
    inference.loaded(service, batching)
    for name in ["", *served]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        log.info('{"event": "shutdown", "signal": %d, "grace_s": %s}', signum, grace_s)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    where = (f"with HTTP on http://{http.address} and gRPC on " if http else "on ") + f"{host}:{bound}"
    print(f"serving {manifest.name} ({manifest.selected}) {where}", flush=True)  # the gRPC address last
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await asyncio.gather(server.stop(grace_s), *([http.stop(grace_s)] if http else []))  # in-flight calls finish
    inference.close()
    flusher.cancel()
    requests.flush()
    log.info('{"event": "stopped"}')


class RequestLog:
    """One JSON line per request, buffered and written in batches.

    A logging call per request cost ~100 us of the ~450 us round trip on 2 cores (measured); appending a
    tuple and writing every `interval` seconds costs a few.
    """

    def __init__(self, enabled: bool = True, interval: float = 0.5):
        self.enabled, self.interval = enabled, interval
        self.pending: list[tuple] = []

    def record(self, method: str, code: str, ms: float, size: int, peer: str) -> None:
        if self.enabled:
            self.pending.append((method, code, ms, size, peer))

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        text = "".join(f'{{"method": "{m}", "code": "{c}", "ms": {ms:.3f}, "bytes": {b}, "peer": "{p}"}}\n'
                       for m, c, ms, b, p in batch)
        sys.stderr.write(text)
        sys.stderr.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()


def serve(artifact: str, host: str = "127.0.0.1", port: int = 8001, workers: int = 1, max_message_mb: float = 16,
          threads: int | None = None, grace_s: float = 10.0, log_requests: bool = True,
          http_port: int | None = None, batching: BatchingConfig | None = None) -> None:
    """Serve until SIGTERM/SIGINT; prints `serving NAME (CANDIDATE) on HOST:PORT` once health says SERVING
    (`serving NAME (CANDIDATE) with HTTP on http://HOST:HTTP_PORT and gRPC on HOST:PORT` when HTTP is on)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    asyncio.run(_serve(artifact, host, port, workers, max_message_mb, threads, grace_s, log_requests, http_port,
                       batching or BatchingConfig()))
