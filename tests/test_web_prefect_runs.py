"""Unit test of the web's Prefect calls: a Prefect that keeps answering 503 (SQLite lock races under load) is
reported as unavailable, so the form and webhooks answer 503 and the caller retries, instead of a 500.
A stand-in HTTP server plays Prefect here; the real server is exercised in test_service.py."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from web.prefect_runs import PrefectUnavailable, Runs


class BusyPrefect(BaseHTTPRequestHandler):
    calls: list[str] = []

    def _answer(self) -> None:
        self.calls.append(f"{self.command} {self.path}")
        healthy = self.path.endswith("/health")
        body = b"true" if healthy else b'{"exception_message":"Service Unavailable"}'
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def busy_prefect():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BusyPrefect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/api"
    server.shutdown()


def test_a_busy_prefect_is_unavailable_not_an_error(busy_prefect):
    runs = Runs(busy_prefect, "http://127.0.0.1:1", "optimize/optimize")
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 1}), pytest.raises(PrefectUnavailable, match="busy"):
        asyncio.run(runs.create({"program": "/somewhere"}))
    assert sum("deployments/name/optimize/optimize" in c for c in BusyPrefect.calls) == 2  # retried once
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):  # the run page and the form's list of runs too
        for call in (runs.read("0b9c2f4e-3d1a-4c5e-9f00-000000000000"), runs.recent()):
            with pytest.raises(PrefectUnavailable, match="busy"):
                asyncio.run(call)
