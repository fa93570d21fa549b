"""`kiln up` with PREFECT_API_DATABASE_CONNECTION_URL: the Prefect server keeps its state in PostgreSQL, and a
run started through the web service lands there (not in a SQLite file under PREFECT_HOME)."""

from __future__ import annotations

import os
import subprocess
import time

import httpx

from conftest import free_port
from services import start_postgres
from test_service import kiln, wait_run


def test_up_on_postgresql(tmp_path, digits_program):
    pg = start_postgres(tmp_path / "pg")
    env = {**os.environ, **pg.env, "KILN_HOME": str(tmp_path / "kiln"), "KILN_STORE": str(tmp_path / "store"),
           "PREFECT_HOME": str(tmp_path / "prefect"), "KILN_PREFECT_PORT": str(free_port()),
           "KILN_WEB_PORT": str(free_port()), "KILN_WEB_TOKEN": "a-token-of-sufficient-length"}
    env.pop("PREFECT_API_URL", None)
    try:
        up = kiln(["up"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        web = f"http://127.0.0.1:{env['KILN_WEB_PORT']}"
        answer = httpx.post(f"{web}/runs", data={"trials": "0", "candidates": "onnxruntime", "shapes": "pixels=1x64"},
                            files={"model": ("model.onnx", (digits_program / "model.onnx").read_bytes())},
                            headers={"Authorization": "Bearer a-token-of-sufficient-length",
                                     "Accept": "application/json"})
        assert answer.status_code == 201, answer.text
        flow_run_id = answer.json()["flow_run_id"]
        run = wait_run({"api": f"http://127.0.0.1:{env['KILN_PREFECT_PORT']}/api"}, flow_run_id)
        assert run["state_type"] == "COMPLETED", run["state"]
        port = pg.address.split(":")[1]
        rows = subprocess.run(["psql", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "prefect", "-tAc",
                               f"select state_type from flow_run where id = '{flow_run_id}'"],
                              capture_output=True, text=True)
        assert rows.stdout.strip() == "COMPLETED", rows.stdout + rows.stderr
        assert not list((tmp_path / "prefect").glob("*.db"))  # no SQLite database was made
    finally:
        kiln(["down"], env)
        time.sleep(0.5)
        pg.stop()
