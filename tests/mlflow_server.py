"""A real MLflow tracking server and MLflow's own client, from their own venv (.venv-mlflow, `make setup`).

MLflow pins its own protobuf, pandas, SQLAlchemy...; kiln talks to it over HTTP only, so it lives apart."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from conftest import ROOT
from services import free_port

MLFLOW_VENV = ROOT / ".venv-mlflow"


def mlflow_bin(name: str) -> Path:
    path = MLFLOW_VENV / "bin" / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: `make setup` installs MLflow's venv")
    return path


class MlflowServer:
    """`mlflow server --serve-artifacts` on a free port, with webhooks allowed to reach kiln on loopback."""

    def __init__(self, home: Path):
        from cryptography.fernet import Fernet

        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()}
        self.log = open(home / "mlflow.log", "wb")  # noqa: SIM115 (open while the server runs)
        self.proc = subprocess.Popen(
            [str(mlflow_bin("mlflow")), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--serve-artifacts",
             "--artifacts-destination", str(home / "artifacts")],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=home, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(home / 'mlflow.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("mlflow server did not answer /health in 120 s")

    def client(self, script: str, timeout: float = 300) -> str:
        """Run `script` with MLflow's own Python client against this server; its stdout."""
        proc = subprocess.run([str(mlflow_bin("python")), "-c", script], capture_output=True, text=True,
                              timeout=timeout, env={**self.env, "MLFLOW_TRACKING_URI": self.uri})
        if proc.returncode:
            raise AssertionError(f"MLflow client script failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def version(self, name: str, version: str) -> dict:
        got = httpx.get(f"{self.uri}/api/2.0/mlflow/model-versions/get", params={"name": name, "version": version},
                        timeout=30)
        got.raise_for_status()
        return got.json()["model_version"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
