"""kiln as a service, for real: `kiln up` starts a Prefect server, the work pool, the deployments, a worker and
the web app; runs come from the REST API (as the UI creates them), the form in headless Chromium, and both
webhook formats; `kiln down` stops exactly what was started. Tests run in file order on one service."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from mlflow_server import MlflowServer
from prefect.client.base import PrefectHttpxSyncClient

from conftest import BIN, ROOT, device_registered, free_port, start_device, stop_device, tracker_started, wait_for

MLFLOW_SECRET = "mlflow-secret-for-tests"
HF_SECRET = "hf-secret-for-tests"
SCREENSHOTS = ROOT / "tests" / "output"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    """A real MLflow tracking server (sqlite, artifacts served by itself), the registry whose webhooks kiln takes."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracker():
    """TVM's RPC tracker the service lists devices of (KILN_TRACKERS)."""
    with tracker_started() as address:
        yield address


@pytest.fixture(scope="module")
def service(tmp_path_factory, digits_program, mlflow, tracker):
    home = tmp_path_factory.mktemp("service")
    env = {**os.environ, "KILN_HOME": str(home / "kiln"), "KILN_STORE": str(home / "store"),
           "KILN_TRACKERS": "{}:{}".format(*tracker),
           "KILN_MLFLOW_TRACKING_URI": mlflow.uri,
           "PREFECT_HOME": str(home / "prefect"), "KILN_PREFECT_PORT": str(free_port()),
           "KILN_WEB_PORT": str(free_port()), "KILN_MLFLOW_WEBHOOK_SECRET": MLFLOW_SECRET,
           "KILN_HF_WEBHOOK_SECRET": HF_SECRET, "KILN_WEB_MAX_UPLOAD_MB": "2",
           "KILN_HF_SOURCE_TEMPLATE": str(digits_program.parent) + "/{name}",
           "KILN_WEBHOOK_PARAMETERS": json.dumps({"candidates": ["onnxruntime"], "trials": 0})}
    for key in ("PREFECT_API_URL", "KILN_WEB_TOKEN"):
        env.pop(key, None)
    proc = kiln(["up"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    token = proc.stdout.split("token: ", 1)[1].split(")", 1)[0]
    svc = {"env": env, "token": token, "web": f"http://127.0.0.1:{env['KILN_WEB_PORT']}",
           "api": f"http://127.0.0.1:{env['KILN_PREFECT_PORT']}/api", "store": Path(env["KILN_STORE"]),
           "home": Path(env["KILN_HOME"]), "program": digits_program}
    pids = {name: json.loads((svc["home"] / "service" / f"{name}.json").read_text())["pid"]
            for name in ("prefect-server", "worker", "web")}
    yield svc
    proc = kiln(["down"], env)
    assert proc.returncode == 0, proc.stderr

    def alive() -> list[str]:
        return [n for n, pid in pids.items() if _running(pid)]

    wait_for(lambda: not alive(), 15, lambda: f"every process of `kiln up` to end after `kiln down`; left: {alive()}")


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie has ended; the pid may vanish between the two calls)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kiln(args: list[str], env: dict[str, str]):
    import subprocess

    return subprocess.run([str(BIN / "kiln"), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def api(svc, method: str, path: str, **kwargs):
    """A call to the Prefect REST API, as the UI makes it, through Prefect's own HTTP client: it retries 503,
    which Prefect on SQLite answers to a write that lost a lock race (~5 % of run creations while a worker
    polls), and raises with the answer's body on any other error."""
    with PrefectHttpxSyncClient(base_url=svc["api"], timeout=30) as client:
        return client.request(method, path, **kwargs).json()


def deployment(svc, name: str) -> dict:
    return api(svc, "GET", f"/deployments/name/{name}/{name}")


def wait_run(svc, flow_run_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = api(svc, "GET", f"/flow_runs/{flow_run_id}")
        if run["state_type"] in FINAL:
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s: {run['state_type']}")


def runs_named(svc, name: str) -> list[dict]:
    return api(svc, "POST", "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}})


def digits_zip(program: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(program.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                zf.write(p, f"digits/{p.relative_to(program)}")
    return buf.getvalue()


def test_up_serves_deployments_schedule_and_health(service):
    assert httpx.get(f"{service['web']}/healthz").status_code == 200
    optimize = deployment(service, "optimize")
    schema = optimize["parameter_openapi_schema"]
    assert schema["required"] == ["request"]  # one OptimizeRequest, the model every front door builds
    props = schema["definitions"]["OptimizeRequest"]["properties"]
    assert "s3://" in props["program"]["description"]  # typed, documented parameters for the UI
    assert props["trials"]["type"] == "integer" and props["upload"]["anyOf"]
    assert optimize["work_pool_name"] == "kiln"
    reoptimize = deployment(service, "reoptimize")
    schedules = reoptimize["schedules"]
    assert [(s["schedule"]["cron"], s["active"]) for s in schedules] == [("0 3 * * *", True)]
    pool = api(service, "GET", "/work_pools/kiln")
    assert pool["type"] == "process"
    assert httpx.get(f"{service['web']}/").status_code == 401  # no token, no form


def test_run_created_through_the_rest_api_as_the_ui_does(service):
    dep = deployment(service, "optimize")
    created = api(service, "POST", f"/deployments/{dep['id']}/create_flow_run", json={
        "parameters": {"request": {"program": str(service["program"]), "candidates": ["onnxruntime"], "trials": 0}}})
    run = wait_run(service, created["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    assert any((service["store"] / "digits").glob("*/manifest.json"))


def test_form_in_chromium(service, tmp_path):
    from playwright.sync_api import sync_playwright

    archive = tmp_path / "digits.zip"
    archive.write_bytes(digits_zip(service["program"]))
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        response = page.goto(service["web"] + "/")
        assert response.status == 401 and page.locator("#token").is_visible()
        page.fill("#token", service["token"])
        page.click("button[type=submit]")
        page.wait_for_selector("#optimize-form")
        page.set_input_files("#archive", str(archive))
        page.fill("#trials", "0")
        for box in page.locator("input[name=candidates]").all():
            box.set_checked(box.get_attribute("value") == "onnxruntime")
        page.screenshot(path=str(SCREENSHOTS / "form.png"), full_page=True)
        page.click("#submit")
        page.wait_for_selector("#prefect-link")
        link = page.get_attribute("#prefect-link", "href")
        flow_run_id = page.url.rsplit("/", 1)[1]
        assert link == f"http://127.0.0.1:{service['env']['KILN_PREFECT_PORT']}/runs/flow-run/{flow_run_id}"
        page.wait_for_selector("#state.COMPLETED", timeout=240_000)  # the page refreshes itself until final
        page.screenshot(path=str(SCREENSHOTS / "form-run.png"), full_page=True)
        page.goto(service["web"] + "/models")
        assert page.locator("#model-digits").is_visible()
        page.screenshot(path=str(SCREENSHOTS / "models.png"), full_page=True)
        browser.close()
    run = api(service, "GET", f"/flow_runs/{flow_run_id}")
    assert run["parameters"]["request"]["program"].startswith(str(service["home"] / "uploads"))
    assert (SCREENSHOTS / "form-run.png").stat().st_size > 10_000


def test_form_bare_model_with_samples_ranges_and_name_in_chromium(service, tmp_path):
    """A model uploaded alone, with samples, ranges, a batch range and a name typed into the form: the run gates
    on those ranges and publishes under that name, with the program kiln wrote for it, accepting that batch."""
    from playwright.sync_api import sync_playwright

    digits = np.load(service["program"] / "digits.npz")
    np.savez(tmp_path / "samples.npz", pixels=digits["x_test"][:40], labels=digits["y_test"][:40])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(service["web"] + "/")
        page.fill("#token", service["token"])
        page.click("button[type=submit]")
        page.wait_for_selector("#optimize-form")
        page.set_input_files("#model", str(service["program"] / "model.onnx"))
        page.set_input_files("#data", str(tmp_path / "samples.npz"))
        page.fill("#ranges", "top1>=0.9\nagreement>=0.97")
        page.fill("#name", "digits-from-form")
        page.fill("#dims", "batch=1..4")
        page.fill("#trials", "0")
        for box in page.locator("input[name=candidates]").all():
            box.set_checked(box.get_attribute("value") in ("onnxruntime", "ort-int8-static"))
        page.click("#submit")
        page.wait_for_selector("#state.COMPLETED", timeout=240_000)
        browser.close()
    folder = next((service["store"] / "digits-from-form").glob("*/manifest.json")).parent
    manifest = json.loads((folder / "manifest.json").read_text())
    static = next(c for c in manifest["candidates"] if c["name"] == "ort-int8-static")
    assert set(static["metrics"]) == {"top1", "agreement"} and static["settings"]["calibration_feeds"] > 0
    assert "agreement(at_least=0.97" in (folder / "program" / "program.py").read_text()
    assert [(d["name"], d["low"], d["high"], d["source"]) for d in manifest["profile"]["dims"]] == \
        [("batch", 1, 4, "declared")] and manifest["inputs"][0]["shape"] == [-1, 64]

    client = _session(service)  # ranges beside a whole program are refused in the browser, not in the worker
    csrf = client.get("/").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    files = {"archive": ("digits.zip", digits_zip(service["program"]), "application/zip")}
    refused = client.post("/runs", data={"csrf": csrf, "ranges": "top1>=0.9"}, files=files)
    assert refused.status_code == 400 and "bare .onnx" in refused.text
    unreadable = client.post("/runs", data={"csrf": csrf, "ranges": "top1=>0.9"}, files=files)
    assert unreadable.status_code == 400 and "cannot read range" in unreadable.text
    empty = client.post("/runs", data={"csrf": csrf, "dims": "batch=4..1"}, files=files)
    assert empty.status_code == 400 and "the range of dimension &#39;batch&#39; is 4..1" in empty.text


def _session(service) -> httpx.Client:
    client = httpx.Client(base_url=service["web"], follow_redirects=False)
    assert client.post("/login", data={"token": service["token"]}).status_code == 303
    return client


def test_form_refuses_bad_uploads_and_forged_posts(service, tmp_path):
    client = _session(service)
    csrf = client.get("/").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    files = {"archive": ("digits.zip", digits_zip(service["program"]), "application/zip")}
    forged = client.post("/runs", data={"trials": "0"}, files=files)  # a cross-site post has no CSRF token
    assert forged.status_code == 403 and "CSRF" in forged.text
    guessed = client.post("/runs", data={"csrf": "0" * len(csrf), "trials": "0"}, files=files)
    assert guessed.status_code == 403 and "CSRF" in guessed.text
    other = _session(service)  # another browser's valid token is bound to that browser's session, not this one
    stolen = other.get("/").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert stolen != csrf
    replayed = client.post("/runs", data={"csrf": stolen, "trials": "0"}, files=files)
    assert replayed.status_code == 403 and "CSRF" in replayed.text
    huge = client.post("/runs", data={"csrf": csrf}, files={"archive": ("big.zip", os.urandom(3 << 20))})
    assert huge.status_code == 413 and "limit" in huge.text

    before = set(Path("/tmp").iterdir())
    escape = io.BytesIO()
    with zipfile.ZipFile(escape, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
        zf.writestr("model.onnx", "x")
    bad = client.post("/runs", data={"csrf": csrf}, files={"archive": ("evil.zip", escape.getvalue())})
    assert bad.status_code == 400 and ".." in bad.text
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w:gz") as tf:
        info = tarfile.TarInfo("program/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    bad = client.post("/runs", data={"csrf": csrf}, files={"archive": ("evil.tar.gz", link.getvalue())})
    assert bad.status_code == 400 and "link" in bad.text
    assert set(Path("/tmp").iterdir()) == before
    assert not any(service["home"].rglob("escaped.txt")) and not list(service["home"].parent.glob("escaped.txt"))
    uploads = service["home"] / "uploads"
    assert not any(p.is_symlink() for p in uploads.rglob("*"))

    wrong = client.post("/runs", data={"csrf": csrf, "image": "Not A Reference"}, files=files)
    assert wrong.status_code == 400 and "not a valid image reference" in wrong.text


def test_devices_listed_and_a_run_measured_on_one(service, tracker):
    """The service lists the tracker's keys and what a device says of itself (a page and /api/devices); a run
    started from the web naming that device (a Prefect deployment run) measures there and says so."""
    host, port = tracker
    device = start_device(tracker, "svc", "1")
    try:
        device_registered(tracker, "svc")
        auth = {"Authorization": f"Bearer {service['token']}"}
        listed = httpx.get(f"{service['web']}/api/devices", headers=auth, timeout=60).json()["trackers"]
        assert [t["tracker"] for t in listed] == [f"{host}:{port}"]
        svc = next(k for k in listed[0]["keys"] if k["key"] == "svc")
        assert svc["devices"] == 1 and svc["description"]["cores"] == 1
        assert svc["description"]["versions"]["tvm"] and svc["description"]["flags"]
        page = httpx.get(f"{service['web']}/devices", headers=auth, timeout=60)
        assert page.status_code == 200 and f"svc@{host}:{port}" in page.text
        assert httpx.get(f"{service['web']}/api/devices", timeout=30).status_code == 401

        program = service["program"]
        files = [("model", ("model.onnx", (program / "model.onnx").read_bytes())),
                 ("files", ("program.py", (program / "program.py").read_bytes())),
                 ("files", ("digits.proto", (program / "digits.proto").read_bytes())),
                 ("files", ("digits.npz", (program / "digits.npz").read_bytes()))]
        answer = httpx.post(f"{service['web']}/runs", files=files,
                            data={"trials": "0", "candidates": "onnxruntime", "name": "digits-on-svc",
                                  "device": f"svc@{host}:{port}"},
                            headers={**auth, "Accept": "application/json"})
        assert answer.status_code == 201, answer.text
        run = wait_run(service, answer.json()["flow_run_id"])
        assert run["state_type"] == "COMPLETED", run["state"]
        assert run["parameters"]["request"]["device"] == f"svc@{host}:{port}"
    finally:
        stop_device(device)
    manifest = json.loads(next((service["store"] / "digits-on-svc").glob("*/manifest.json")).read_text())
    assert manifest["device"]["key"] == "svc" and manifest["device"]["measurements"]["rounds"] > 0
    assert manifest["request"]["device"] == f"svc@{host}:{port}"  # what a re-optimization repeats


def test_separate_files_with_a_bearer_token(service, tmp_path):
    """An API client (Bearer token, no cookie, so no CSRF) sending the model and the program's files apart."""
    program = service["program"]
    files = [("model", ("model.onnx", (program / "model.onnx").read_bytes())),
             ("files", ("program.py", (program / "program.py").read_bytes())),
             ("files", ("digits.proto", (program / "digits.proto").read_bytes())),
             ("files", ("digits.npz", (program / "digits.npz").read_bytes()))]
    answer = httpx.post(f"{service['web']}/runs", files=files, data={"trials": "0", "candidates": "onnxruntime"},
                        headers={"Authorization": f"Bearer {service['token']}", "Accept": "application/json"})
    assert answer.status_code == 201, answer.text
    run = wait_run(service, answer.json()["flow_run_id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    assert sorted(p.name for p in Path(run["parameters"]["request"]["program"]).iterdir()) == \
        ["digits.npz", "digits.proto", "model.onnx", "program.py"]
    wrong = httpx.post(f"{service['web']}/runs", files=files, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401


def mlflow_delivery(body: dict | bytes, delivery: str, stamp: int | None = None,
                    secret: str = MLFLOW_SECRET) -> tuple[bytes, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = int(time.time()) if stamp is None else stamp
    sig = base64.b64encode(hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + raw, hashlib.sha256)
                           .digest()).decode()
    return raw, {"X-MLflow-Signature": f"v1,{sig}", "X-MLflow-Delivery-Id": delivery,
                 "X-MLflow-Timestamp": str(stamp), "Content-Type": "application/json"}


def mlflow_event(service, version: str) -> dict:
    return {"entity": "model_version", "action": "created", "timestamp": int(time.time() * 1000),
            "data": {"name": "digits-mlflow", "version": version, "source": f"file://{service['program']}",
                     "run_id": "abc", "tags": {}, "description": None}}


def test_mlflow_webhook_once_per_version_however_often_delivered(service):
    url = f"{service['web']}/webhooks/mlflow"
    raw, headers = mlflow_delivery(mlflow_event(service, "7"), "delivery-7")
    with ThreadPoolExecutor(16) as pool:  # the registry retrying the same delivery, 50 times, concurrently
        answers = list(pool.map(lambda _: httpx.post(url, content=raw, headers=headers, timeout=30), range(50)))
    assert {a.status_code for a in answers} == {202}
    ids = {a.json()["flow_run_id"] for a in answers}
    assert len(ids) == 1
    assert len(runs_named(service, "mlflow-digits-mlflow-7")) == 1
    run = wait_run(service, ids.pop())
    assert run["state_type"] == "COMPLETED", run["state"]
    assert any((service["store"] / "digits-mlflow").glob("*/manifest.json"))
    assert 'id="model-digits-mlflow"' in _session(service).get("/models").text

    count = len(api(service, "POST", "/flow_runs/filter", json={}))
    raw8, good = mlflow_delivery(mlflow_event(service, "8"), "delivery-8")
    assert httpx.post(url, content=raw8, headers={"Content-Type": "application/json"}).status_code == 401
    assert httpx.post(url, content=raw8, headers={**good, "X-MLflow-Signature": "v1,AAAA"}).status_code == 403
    _, forged = mlflow_delivery(mlflow_event(service, "8"), "delivery-8", secret="not-the-secret")
    assert httpx.post(url, content=raw8, headers=forged).status_code == 403
    stale_raw, stale = mlflow_delivery(mlflow_event(service, "8"), "delivery-8", stamp=int(time.time()) - 3600)
    answer = httpx.post(url, content=stale_raw, headers=stale)
    assert answer.status_code == 403 and "stale" in answer.json()["detail"]
    bad_raw, bad = mlflow_delivery(b"{not json", "delivery-9")
    assert httpx.post(url, content=bad_raw, headers=bad).status_code == 400
    other_raw, other = mlflow_delivery({"entity": "registered_model", "action": "created", "data": {}}, "d-10")
    answer = httpx.post(url, content=other_raw, headers=other)
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert len(api(service, "POST", "/flow_runs/filter", json={})) == count  # none of these ran


WEBHOOK = """
from mlflow import MlflowClient

if not MlflowClient().list_webhooks():  # MLflow delivers model_version.created to kiln from now on
    MlflowClient().create_webhook(name="kiln", url="{url}", events=["model_version.created"], secret="{secret}")
"""
LOG_MODEL = """
import mlflow, onnx

model = onnx.load("{model}")
if {static}:  # the batch dimension fixed, so kiln needs no shapes for it
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = 1
info = mlflow.onnx.log_model(model, name="model", registered_model_name="{name}")
print(info.registered_model_version)
"""


def log_onnx_model(mlflow, service, name: str, static: bool) -> str:
    """What an MLflow user does: log an ONNX model into the registry (MLflow then delivers its webhook)."""
    return mlflow.client(webhook(service) + LOG_MODEL.format(name=name, model=service["program"] / "model.onnx",
                                                             static=static)).split()[-1]


def webhook(service) -> str:
    return WEBHOOK.format(url=f"{service['web']}/webhooks/mlflow", secret=MLFLOW_SECRET)


def wait_named(service, name: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := runs_named(service, name):
            return wait_run(service, found[0]["id"])
        time.sleep(1)
    raise AssertionError(f"no flow run {name} within {timeout} s: the webhook did not arrive or was refused")


def test_mlflow_logged_model_optimized_and_its_version_tagged(service, mlflow):
    """MLflow 3's own webhook for `mlflow.onnx.log_model(..., registered_model_name=...)`: the source is
    models:/m-<id> with no run; kiln fetches the model through the tracking server, optimizes it as a bare
    model, and the registry's version shows the outcome. A model kiln cannot take gets its reason there."""
    version = log_onnx_model(mlflow, service, "digits-logged", static=True)
    assert mlflow.version("digits-logged", version)["source"].startswith("models:/m-")
    run = wait_named(service, f"mlflow-digits-logged-{version}")
    assert run["state_type"] == "COMPLETED", run["state"]
    tags = {t["key"]: t["value"] for t in mlflow.version("digits-logged", version).get("tags", [])}
    assert tags["kiln.status"] == "published" and tags["kiln.run"] == run["id"], tags
    assert tags["kiln.selected"] == "onnxruntime" and tags["kiln.speedup"].endswith("x")
    artifact = Path(tags["kiln.artifact"])
    assert artifact.parent == service["store"] / "digits-logged" and (artifact / "manifest.json").is_file()

    # the batch dimension left open, as most registrations have it, and no shapes in KILN_WEBHOOK_PARAMETERS:
    # published at batch 1, and the version's tags say which profile was used
    version = log_onnx_model(mlflow, service, "digits-dynamic", static=False)
    run = wait_named(service, f"mlflow-digits-dynamic-{version}")
    assert run["state_type"] == "COMPLETED", run["state"]
    tags = {t["key"]: t["value"] for t in mlflow.version("digits-dynamic", version).get("tags", [])}
    assert tags["kiln.status"] == "published" and tags["kiln.profile"] == "batch 1 (batch default)", tags
    manifest = json.loads((Path(tags["kiln.artifact"]) / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 64] and manifest["request"]["default_dims"] is True


LOG_PROGRAM = """
import mlflow
from mlflow import MlflowClient

with mlflow.start_run() as run:
    mlflow.log_artifacts("{program}", artifact_path="program")
client = MlflowClient()
client.create_registered_model("{name}")
version = client.create_model_version("{name}", source=f"runs:/{{run.info.run_id}}/program", run_id=run.info.run_id)
print(version.version)
"""


def test_mlflow_run_artifact_holding_a_kiln_program(service, mlflow):
    """A kiln program folder logged as a run's artifacts and registered from runs:/: that program is optimized,
    with its own dataset and metrics (not as a bare model)."""
    version = mlflow.client(webhook(service) + LOG_PROGRAM.format(program=service["program"],
                                                                  name="digits-program")).split()[-1]
    assert mlflow.version("digits-program", version)["source"].startswith("runs:/")
    run = wait_named(service, f"mlflow-digits-program-{version}")
    assert run["state_type"] == "COMPLETED", run["state"]
    tags = {t["key"]: t["value"] for t in mlflow.version("digits-program", version).get("tags", [])}
    manifest = json.loads((Path(tags["kiln.artifact"]) / "manifest.json").read_text())
    assert tags["kiln.status"] == "published" and manifest["program"]["source"].startswith("runs:/")
    assert "top1_vs_reference" in json.dumps(manifest), "not the logged program's own metrics"


def test_huggingface_webhook(service):
    url = f"{service['web']}/webhooks/huggingface"
    event = {"event": {"action": "update", "scope": "repo.content"},
             "repo": {"type": "model", "name": "acme/digits", "id": "x", "headSha": "0123abcd"},
             "webhook": {"id": "w", "version": 3}}
    assert httpx.post(url, json=event, headers={"X-Webhook-Secret": "wrong"}).status_code == 403
    assert httpx.post(url, json=event).status_code == 401
    answers = [httpx.post(url, json=event, headers={"X-Webhook-Secret": HF_SECRET}) for _ in range(3)]
    assert {a.status_code for a in answers} == {202} and len({a.json()["flow_run_id"] for a in answers}) == 1
    run = wait_run(service, answers[0].json()["flow_run_id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"]["request"]["program"] == str(service["program"])
    assert run["parameters"]["request"]["candidates"] == ["onnxruntime"]  # KILN_WEBHOOK_PARAMETERS
    discussion = {"event": {"action": "create", "scope": "discussion"}, "repo": {"type": "model", "name": "a/b"}}
    assert httpx.post(url, json=discussion, headers={"X-Webhook-Secret": HF_SECRET}).json()["status"] == "ignored"


def test_models_page_lists_versions(service):
    dep = deployment(service, "optimize")  # its own published version: the test does not rely on earlier ones
    created = api(service, "POST", f"/deployments/{dep['id']}/create_flow_run", json={
        "parameters": {"request": {"program": str(service["program"]), "candidates": ["onnxruntime"],
                                   "trials": 0}}})
    assert wait_run(service, created["id"])["state_type"] == "COMPLETED"
    client = _session(service)
    text = client.get("/models").text
    assert 'id="model-digits"' in text and "x</strong>" in text
    assert "top1" in text  # the selected candidate's metrics with their ranges


def test_prefect_down_then_back(service):
    """Prefect stops: the form and webhooks answer 503 and start nothing; once `kiln up` has brought it back,
    the registry's retry of the very same delivery is accepted."""
    record = json.loads((service["home"] / "service" / "prefect-server.json").read_text())
    os.killpg(record["pid"], 15)
    deadline = time.time() + 60
    while time.time() < deadline and psutil.pid_exists(record["pid"]) and \
            psutil.Process(record["pid"]).status() != "zombie":
        time.sleep(0.5)
    assert httpx.get(f"{service['web']}/healthz").status_code == 503
    raw, headers = mlflow_delivery(mlflow_event(service, "11"), "delivery-11")
    down = httpx.post(f"{service['web']}/webhooks/mlflow", content=raw, headers=headers, timeout=30)
    assert down.status_code == 503 and "retry" in down.json()["detail"]
    client = _session(service)
    page = client.get("/").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    form = client.post("/runs", data={"csrf": csrf, "trials": "0", "candidates": ["onnxruntime"]},
                       files={"archive": ("digits.zip", digits_zip(service["program"]))})
    assert form.status_code == 503 and "Prefect" in form.text

    proc = kiln(["up"], service["env"])  # starts only what is not running
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker: already running" in proc.stderr and "web: already running" in proc.stderr
    again = httpx.post(f"{service['web']}/webhooks/mlflow", content=raw, headers=headers, timeout=30)
    assert again.status_code == 202
    run = wait_run(service, again.json()["flow_run_id"])
    assert run["state_type"] == "COMPLETED", run["state"]
