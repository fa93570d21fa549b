"""Fixtures that start real parts: a Prefect server, the kiln CLI in subprocesses, the digits example."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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

from services import free_port, shared, start_dockerd, start_registry, start_s3  # noqa: E402


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


def wait_for(predicate, timeout: float, what, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned), or fail naming `what` (a string, or a
    callable that describes the state at the deadline) after `timeout` seconds: a fixed sleep is too short on a
    loaded machine and wasted time on an idle one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


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


@pytest.fixture(scope="session")
def digits_artifact(digits_program, prefect_server, kiln_home, tmp_path_factory) -> Path:
    """A real digits artifact, published by the real flow (onnxruntime only: no tuning needed here)."""
    store = tmp_path_factory.mktemp("serving-store")
    env = {**os.environ, "KILN_HOME": str(kiln_home), "KILN_STORE": str(store), "PREFECT_API_URL": prefect_server,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(kiln_home / "prefect")}
    proc = run_kiln(["optimize", str(digits_program), "--candidates", "onnxruntime", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json

    manifest = json.loads(proc.stdout)
    return store / "digits" / manifest["id"]


class Served:
    """A `kiln serve` subprocess on a free loopback port."""

    def __init__(self, artifact: Path | str, *args: str, env: dict[str, str] | None = None):
        self.log = tempfile_path()
        self.proc = subprocess.Popen([str(BIN / "kiln"), "serve", str(artifact), "--port", "0", "--http-port", "0",
                                      *args],
                                     stdout=subprocess.PIPE, stderr=open(self.log, "wb"), text=True, cwd=ROOT,
                                     env=env)
        line = self.proc.stdout.readline()  # "serving NAME (BACKEND) with HTTP on URL and gRPC on HOST:PORT"
        if not line.startswith("serving"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{Path(self.log).read_text()[-3000:]}")
        self.address = line.rsplit(" ", 1)[1].strip()
        self.http = line.split("http://", 1)[1].split()[0]  # HOST:PORT

    def logs(self) -> str:
        return Path(self.log).read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def tempfile_path() -> str:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="kiln-serve-", suffix=".log")
    os.close(fd)
    return path


@pytest.fixture(scope="module")
def digits_server(digits_artifact):
    served = Served(digits_artifact, "--workers", "2", "--max-message-mb", "1")
    yield served
    served.stop()


@pytest.fixture(scope="session")
def embed_tvm_artifact(tmp_path_factory) -> tuple[Path, Path]:
    """(artifact, source model): an embedding model compiled by TVM (no search) and published with the SDK.

    The flow would publish onnxruntime for it (faster); this builds the TVM-selected artifact directly so
    the runtime-only path and the index guards are exercised on compiled code.
    """
    from kiln.artifact.manifest import CandidateResult, LatencyMs, Manifest, ModelInfo, ProgramInfo, versions
    from kiln.artifact.specs import IndexGuard, TensorSpec
    from kiln.artifact.store import ArtifactStore
    from kiln.compiler import Limits, compile_model
    from kiln.fs import file_sha256
    from kiln.optimize.protocol import generate

    import onnx_models

    tmp = tmp_path_factory.mktemp("embed")
    model = onnx_models.embedding(tmp / "embed.onnx", vocab=50)
    inputs = [TensorSpec(name="ids", dtype="int64", shape=[1, 6])]
    outputs = [TensorSpec(name="pooled", dtype="float32", shape=[1, 8])]
    store = ArtifactStore(tmp / "store")

    def fill(folder):
        compile_model(model, inputs, target="host", limits=Limits(trials=0), db_dir=tmp / "db",
                      out=folder / "model.so")
        info = generate(folder / "protocol")
        cand = CandidateResult(name="tvm", backend="tvm", latency_ms=LatencyMs(p50=1, p90=1), passed=True)
        return Manifest(name="embed", created_at="2026-01-01T00:00:00", target="llvm", dataset="synthetic",
                        model=ModelInfo(path="model.so", sha256=file_sha256(folder / "model.so"), source_sha256=""),
                        program=ProgramInfo(sha256="", source=str(model)), inputs=inputs, outputs=outputs,
                        candidates=[cand], selected="tvm", backend="tvm", speedup_vs_baseline=1.0,
                        versions=versions(), protocol=info, guards=[IndexGuard(input="ids", low=-50, high=50,
                                                                                node="embed")])

    return store.publish(fill), model


@pytest.fixture(scope="session")
def docker_engine():
    """The dockerd .ci/run started (KILN_TEST_DOCKER_HOST), else a private one whose data root persists in
    ~/.cache so local reruns reuse base and runtime layers."""
    engine = shared("docker") or start_dockerd(
        Path(os.environ.get("KILN_TEST_DOCKER_ROOT", Path.home() / ".cache/kiln-tests/docker")))
    yield engine
    engine.stop()


BASE_TAG = "kiln/ubuntu:24.04"
_early_base: subprocess.Popen | None = None


def _make_base(engine_env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / "runtime_image" / "make_base.sh"), BASE_TAG], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **engine_env, "DOCKER": shutil.which("docker") or "docker"})


def pytest_collection_modifyitems(session, config, items) -> None:
    """With .ci/run's Docker engine, and a test that needs the base image, start making it now: on a new machine
    debootstrap takes minutes, mostly downloads, which then overlap the tests that come first."""
    global _early_base
    engine = shared("docker")
    if engine and any("base_image" in getattr(item, "fixturenames", ()) for item in items):
        _early_base = _make_base(engine.env)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _early_base is not None and _early_base.poll() is None:  # a run stopped before any test needed it
        _early_base.terminate()


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    """Ubuntu 24.04 made by `runtime_image/make_base.sh` (debootstrap): Docker Hub is out of reach here. Built
    once per machine: later runs, each with a new dockerd, load the copy it saved (keyed by the script's content).
    Started at collection where the engine is .ci/run's (pytest_collection_modifyitems)."""
    proc = _early_base or _make_base(docker_engine.env)
    output, _ = proc.communicate()
    assert proc.returncode == 0, output
    return BASE_TAG


@contextlib.contextmanager
def tracker_started():
    """TVM's own RPC tracker on loopback (`python -m tvm.exec.rpc_tracker`); yields (host, port)."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "python"), "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                             str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # its server is a child process

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(up, 60, "TVM's RPC tracker")
        yield ("127.0.0.1", port)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the tracker and the PopenWorker that serves it (else it outlives us)
        proc.wait(10)


@pytest.fixture
def rpc_tracker():
    with tracker_started() as address:
        yield address


def start_device(tracker, key: str, cpu: str, env: dict | None = None) -> subprocess.Popen:
    """`taskset -c CPU python -m kiln.device ...` in its own process group (its RPC server and sessions with it)."""
    host, port = tracker
    return subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-m", "kiln.device", "--tracker", f"{host}:{port}",
                             "--key", key], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env or os.environ)


def device_registered(tracker, key: str, count: int = 1):
    from tvm import rpc

    from kiln.device.client import devices

    wait_for(lambda: len(devices(rpc.connect_tracker(*tracker), key)) >= count, 60, f"{count} device(s) under {key}")


def stop_device(device: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if device.poll() is None:
        os.killpg(device.pid, sig)
        device.wait(30)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """The registry .ci/run started on 127.0.0.1:5000 (KILN_TEST_REGISTRY), else a private one."""
    service = shared("registry") or start_registry(tmp_path_factory.mktemp("registry"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """The moto_server .ci/run started (KILN_TEST_S3_*), else a private one; auth enforced, bucket `models`."""
    service = shared("s3") or start_s3(tmp_path_factory.mktemp("s3"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def shipping(docker_engine, base_image, s3) -> dict[str, str]:
    """A Docker engine, the base image and S3 credentials, as a user's shell would have them."""
    return {**docker_engine.env, **s3.env, "KILN_BASE_IMAGE": base_image}


@pytest.fixture
def ship_env(kiln_env, shipping) -> dict[str, str]:
    return {**kiln_env, **shipping}
