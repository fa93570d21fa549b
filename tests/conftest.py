"""Fixtures that start real parts: a Prefect server, the kiln CLI in subprocesses, the digits example."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on loopback; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("prefect server did not become healthy in 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def kiln_home(tmp_path_factory) -> Path:
    """One KILN_HOME for the session, so builds and tuning databases are shared between tests."""
    return tmp_path_factory.mktemp("kiln-home")


@pytest.fixture
def kiln_env(prefect_server, kiln_home, tmp_path) -> dict[str, str]:
    env = {**os.environ, "KILN_HOME": str(kiln_home), "KILN_STORE": str(tmp_path / "store"),
           "PREFECT_API_URL": prefect_server, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_HOME": str(kiln_home / "prefect"), "PYTHONUNBUFFERED": "1"}
    return env


def run_kiln(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kiln"), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="session")
def digits_program(tmp_path_factory) -> Path:
    """A copy of examples/digits with its model trained and exported by the example's own script."""
    dest = tmp_path_factory.mktemp("programs") / "digits"
    shutil.copytree(ROOT / "examples" / "digits", dest, ignore=shutil.ignore_patterns("model.onnx", "__pycache__"))
    subprocess.run([sys.executable, str(dest / "train.py")], check=True, capture_output=True)
    assert (dest / "model.onnx").is_file()
    return dest


def store_snapshot(store: Path) -> dict[str, bytes]:
    """Every file under the store with its bytes: to prove a failed run touched nothing."""
    if not store.exists():
        return {}
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
