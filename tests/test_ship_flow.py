"""`kiln optimize --upload --image` on a real Prefect server: one run publishes, uploads, builds and pushes; a
destination that cannot take the result fails the run early, retried only where a retry can help."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from minio import Minio

from conftest import run_kiln, store_snapshot
from services import start_s3


def task_runs_of_latest_flow_run(api: str) -> dict[str, dict]:
    flow_run = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}).json()[0]
    runs = httpx.post(f"{api}/task_runs/filter",
                      json={"flow_runs": {"id": {"any_": [flow_run["id"]]}}}).json()
    return {r["name"].rsplit("-", 1)[0]: r for r in runs} | {"_flow": flow_run}


def test_optimize_uploads_builds_and_pushes_in_one_run(digits_program, ship_env, registry):
    proc = run_kiln(["optimize", str(digits_program), "--candidates", "onnxruntime,ort-fp32-basic",
                     "--upload", "s3://models/runs", "--image", f"{registry.address}/digits-flow"], ship_env,
                    timeout=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    artifact = Path(proc.stdout.split("artifact: ", 1)[1].split()[0])
    manifest = json.loads((artifact / "manifest.json").read_text())
    upload = manifest["uploads"][-1]["uri"]
    image = manifest["images"][-1]["reference"]
    assert f"upload: {upload}" in proc.stdout and f"image: {image}" in proc.stdout
    assert upload == f"s3://models/runs/digits/{manifest['id']}"
    assert image.startswith(f"{registry.address}/digits-flow@sha256:")
    s3 = Minio(ship_env["KILN_S3_ENDPOINT"], ship_env["KILN_S3_ACCESS_KEY"], ship_env["KILN_S3_SECRET_KEY"],
               secure=False)
    assert s3.get_object("models", "runs/digits/LATEST").read().decode() == manifest["id"]
    tags = httpx.get(f"http://{registry.address}/v2/digits-flow/tags/list").json()["tags"]
    assert manifest["id"] in tags

    runs = task_runs_of_latest_flow_run(ship_env["PREFECT_API_URL"])
    for name in ("check-upload", "check-image", "publish", "upload", "image"):
        assert runs[name]["state_type"] == "COMPLETED", (name, runs[name]["state_type"])


def test_wrong_key_fails_at_once_stopped_server_is_retried(digits_program, ship_env, tmp_path):
    store = Path(ship_env["KILN_STORE"])
    before = store_snapshot(store)
    wrong = run_kiln(["optimize", str(digits_program), "--candidates", "onnxruntime", "--upload", "s3://models/x"],
                     {**ship_env, "KILN_S3_SECRET_KEY": "wrong"})
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert "refused the credentials" in wrong.stderr and "Traceback" not in wrong.stderr
    runs = task_runs_of_latest_flow_run(ship_env["PREFECT_API_URL"])
    assert runs["check-upload"]["run_count"] == 1  # a refusal is not retried
    assert "validate" not in runs  # and nothing was tuned or published for a result it could not ship
    assert store_snapshot(store) == before

    server = start_s3(tmp_path / "s3")
    server.stop()
    stopped = run_kiln(["optimize", str(digits_program), "--candidates", "onnxruntime", "--upload", "s3://models/x"],
                       {**ship_env, **server.env})
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert f"cannot reach http://{server.address}" in stopped.stderr and "Traceback" not in stopped.stderr
    runs = task_runs_of_latest_flow_run(ship_env["PREFECT_API_URL"])
    assert runs["check-upload"]["run_count"] == 3  # unreachable: Prefect retried the task twice
    assert store_snapshot(store) == before


SAVE_BLOCK = """
import os, sys
from tasks.blocks import KilnS3
KilnS3(endpoint=os.environ["KILN_S3_ENDPOINT"], access_key=os.environ["KILN_S3_ACCESS_KEY"],
       secret_key=os.environ["KILN_S3_SECRET_KEY"], secure=False).save(sys.argv[1], overwrite=True)
"""


def test_upload_settings_from_a_prefect_block(digits_program, ship_env):
    """Credentials kept in Prefect (a kiln-s3 block), not in the environment of whoever starts the run."""
    import subprocess
    import sys

    from conftest import ROOT

    saved = subprocess.run([sys.executable, "-c", SAVE_BLOCK, "team-s3"], env=ship_env, cwd=ROOT,
                           capture_output=True, text=True)
    assert saved.returncode == 0, saved.stderr
    env = {k: v for k, v in ship_env.items() if not k.startswith("KILN_S3_")} | {"KILN_S3_BLOCK": "team-s3"}
    proc = run_kiln(["optimize", str(digits_program), "--candidates", "onnxruntime", "--upload",
                     "s3://models/from-block", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads(proc.stdout)
    s3 = Minio(ship_env["KILN_S3_ENDPOINT"], ship_env["KILN_S3_ACCESS_KEY"], ship_env["KILN_S3_SECRET_KEY"],
               secure=False)
    assert s3.get_object("models", "from-block/digits/LATEST").read().decode() == manifest["id"]
    missing = run_kiln(["optimize", str(digits_program), "--candidates", "onnxruntime", "--upload",
                        "s3://models/x"], {**env, "KILN_S3_BLOCK": "no-such-block"})
    assert missing.returncode == 2 and "no kiln-s3 block named 'no-such-block'" in missing.stderr
