"""Runtime images through a real dockerd and registry: build, push, pull back by digest, run, call."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import docker
import httpx
import numpy as np
import pytest

import kiln
from kiln.artifact.store import verify
from kiln.client import connect

from conftest import free_port, run_kiln, store_snapshot
from services import start_registry


def wait_serving(container, timeout: float = 90) -> float:
    """Seconds from now until the container's log says SERVING; fails with the log otherwise."""
    start = time.time()
    while time.time() - start < timeout:
        container.reload()
        if "serving " in container.logs().decode():
            return time.time() - start
        if container.status == "exited":
            break
        time.sleep(0.1)
    raise AssertionError(f"container did not start serving:\n{container.logs().decode()[-3000:]}")


def check_predictions(address: str, artifact: Path, program: Path) -> None:
    rows = np.load(program / "digits.npz")["x_test"][:10]
    local = kiln.load(artifact)
    with connect(address, artifact=artifact) as client:  # the generated client of the artifact's protocol
        for row in rows:
            reply = client.predict(pixels=row.tolist())
            want = local.run({"pixels": row.reshape(1, 64)})["probabilities"][0]
            np.testing.assert_allclose(reply.probabilities, want, rtol=1e-5, atol=1e-6)
            assert reply.label == int(want.argmax())


@pytest.fixture(scope="module")
def pushed(digits_artifact, shipping, registry, kiln_home):
    """`kiln image` on the digits artifact: builds the generic runtime image and the model's, pushes every tag."""
    env = {**os.environ, **shipping, "KILN_HOME": str(kiln_home)}
    proc = run_kiln(["image", str(digits_artifact), f"{registry.address}/digits"], env, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def test_build_push_pull_by_digest_run_and_call(pushed, digits_artifact, digits_program, ship_env, registry):
    manifest = json.loads((digits_artifact / "manifest.json").read_text())
    entry = manifest["images"][-1]
    assert pushed == entry["reference"] == f"{registry.address}/digits@{entry['digest']}"
    assert entry["tags"][0] == manifest["id"] and f"v{manifest['version']}" in entry["tags"]
    assert verify(digits_artifact)[1] == []  # recording the image left the artifact's files as they were
    tags = httpx.get(f"http://{registry.address}/v2/digits/tags/list").json()["tags"]
    assert set(entry["tags"]) <= set(tags)
    runtime_repo, runtime_digest = entry["runtime_reference"].split("@")  # the generic image is pushed too
    assert runtime_repo == f"{registry.address}/kiln-runtime"
    runtime_tag = entry["runtime"].rsplit(":", 1)[1]
    assert runtime_tag in httpx.get(f"http://{registry.address}/v2/kiln-runtime/tags/list").json()["tags"]
    head = httpx.head(f"http://{registry.address}/v2/kiln-runtime/manifests/{runtime_tag}",
                      headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert head.headers["Docker-Content-Digest"] == runtime_digest
    head = httpx.head(f"http://{registry.address}/v2/digits/manifests/{manifest['id']}",
                      headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert head.headers["Docker-Content-Digest"] == entry["digest"]

    client = docker.DockerClient(base_url=ship_env["DOCKER_HOST"])
    runtime = client.images.get(entry["runtime"])
    assert runtime.attrs["Config"]["User"] == "kiln"
    for tag in entry["tags"]:  # drop every local copy: the run below must come from the registry
        client.images.remove(f"{registry.address}/digits:{tag}", force=True)
    client.images.pull(f"{registry.address}/digits@{entry['digest']}")
    image = client.images.get(f"{registry.address}/digits@{entry['digest']}")
    assert image.labels["kiln.artifact"] == manifest["id"] and image.labels["kiln.model"] == "digits"

    assert {"8000/tcp", "8001/tcp"} <= set(image.attrs["Config"]["ExposedPorts"])  # HTTP and gRPC, Triton's pair
    port, http_port = free_port(), free_port()
    container = client.containers.run(image.id, detach=True, network_mode="host",
                                      environment={"KILN_PORT": str(port), "KILN_HTTP_PORT": str(http_port)})
    try:
        wait_serving(container)
        check_predictions(f"127.0.0.1:{port}", digits_artifact, digits_program)
        row = np.load(digits_program / "digits.npz")["x_test"][0]
        reply = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/digits/infer", json={"inputs": [
            {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}]})
        assert reply.status_code == 200 and reply.json()["outputs"][0]["shape"] == [1, 10], reply.text
        assert "kiln_requests_total{" in httpx.get(f"http://127.0.0.1:{http_port}/metrics").text
        no_compiler = container.exec_run(["python", "-c", "import tvm, os; print(os.listdir(os.path.dirname("
                                          "tvm.__file__) + '/lib'))"], user="kiln")
        assert no_compiler.exit_code == 0 and "libtvm_compiler" not in no_compiler.output.decode()
        assert "libtvm_runtime.so" in no_compiler.output.decode()
        layers = container.exec_run(["python", "-c", "import kiln, os; print(sorted(os.listdir(os.path.dirname("
                                     "kiln.__file__))))"], user="kiln")
        assert layers.exit_code == 0, layers.output.decode()
        present = layers.output.decode()
        for layer in ("'runtime'", "'serving'", "'artifact'", "'program'"):
            assert layer in present, present
        for layer in ("'compiler'", "'optimize'", "'ship'", "'cli'", "'service'"):  # the optimizer side stays out
            assert layer not in present, present
        deadline = time.time() + 60  # HEALTHCHECK runs grpc.health.v1 inside the container
        while time.time() < deadline:
            container.reload()
            if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
                break
            time.sleep(1)
        assert container.attrs["State"]["Health"]["Status"] == "healthy"
    finally:
        container.stop(timeout=10)
        logs = container.logs().decode()
        container.remove()
    assert '"event": "stopped"' in logs  # SIGTERM drained and stopped cleanly


def test_generic_image_serves_a_mounted_artifact(pushed, digits_artifact, digits_program, ship_env, tmp_path):
    client = docker.DockerClient(base_url=ship_env["DOCKER_HOST"])
    runtime = json.loads((digits_artifact / "manifest.json").read_text())["images"][-1]["runtime_reference"]
    client.images.pull(runtime)  # the generic image as pushed, by digest
    private = tmp_path / "artifact"  # pytest's folders are 0700 root: the image's user (uid 10001) cannot read
    shutil.copytree(digits_artifact, private)
    port = free_port()
    mount = {str(private): {"bind": "/models/current", "mode": "ro"}}
    container = client.containers.run(runtime, detach=True, network_mode="host", volumes=mount,
                                      environment={"KILN_PORT": str(port), "KILN_HTTP_PORT": "-1"})
    container.wait(timeout=60)
    logs = container.logs().decode()
    container.remove()
    assert "permission denied for uid 10001" in logs and "chmod -R a+rX" in logs and "Traceback" not in logs

    readable = Path(tempfile.mkdtemp(prefix="kiln-mount-"))
    try:
        shutil.copytree(digits_artifact, readable / "artifact")
        for p in [readable, *readable.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        mount = {str(readable / "artifact"): {"bind": "/models/current", "mode": "ro"}}
        container = client.containers.run(runtime, detach=True, network_mode="host",
                                          environment={"KILN_PORT": str(port), "KILN_HTTP_PORT": "-1"},
                                          volumes=mount)
        try:
            wait_serving(container)
            check_predictions(f"127.0.0.1:{port}", digits_artifact, digits_program)
        finally:
            container.remove(force=True)
    finally:
        shutil.rmtree(readable, ignore_errors=True)


def test_stopped_registry_and_missing_engine_are_clear(digits_artifact, ship_env, pushed, tmp_path):
    registry = start_registry(tmp_path / "registry")
    address = registry.address
    registry.stop()
    before = store_snapshot(digits_artifact)
    proc = run_kiln(["image", str(digits_artifact), f"{address}/digits"], ship_env, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"pushing {address}/digits" in proc.stderr and "after 3 attempts" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert store_snapshot(digits_artifact) == before  # no image recorded for a push that did not happen

    gone = run_kiln(["image", str(digits_artifact), f"{address}/digits"],
                    {**ship_env, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert gone.returncode == 2 and "no Docker engine is reachable" in gone.stderr and "DOCKER_HOST" in gone.stderr

    bad = run_kiln(["image", str(digits_artifact), "Not A Reference"], ship_env)
    assert bad.returncode == 2 and "is not a valid image reference" in bad.stderr


def test_image_carries_the_programs_requirements_and_oci_labels(digits_program, registry, ship_env, tmp_path):
    """A program whose mapping code imports a package the runtime does not have (a tokenizer) lists it in
    `requirements`: its image installs the wheels fetched on the host, and serves. The image says what it is
    in OCI's labels."""
    program = tmp_path / "digits-tok"
    shutil.copytree(digits_program, program)
    text = (program / "program.py").read_text()
    text = text.replace("import numpy as np\n",
                        "import numpy as np\nfrom tokenizers.pre_tokenizers import Whitespace\n")
    text = text.replace('    name = "digits"\n', '    name = "digits-tok"\n    requirements = ["tokenizers==0.23.3"]\n')
    text = text.replace("        pixels = np.asarray(request.pixels, dtype=np.float32)\n",
                        "        assert Whitespace().pre_tokenize_str('a b') == [('a', (0, 1)), ('b', (2, 3))]\n"
                        "        pixels = np.asarray(request.pixels, dtype=np.float32)\n")
    (program / "program.py").write_text(text)
    env, store = ship_env, Path(ship_env["KILN_STORE"])
    bad = tmp_path / "digits-bad"
    shutil.copytree(program, bad)
    (bad / "program.py").write_text(text.replace('"tokenizers==0.23.3"', '"tokenizers=0.23.3"'))
    proc = run_kiln(["optimize", str(bad), "--candidates", "onnxruntime"], env)
    assert proc.returncode != 0 and "requirements[0] 'tokenizers=0.23.3' is not a pip requirement" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_kiln(["optimize", str(program), "--candidates", "onnxruntime", "--json",
                     "--image", f"{registry.address}/digits-tok"], env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    artifact = store / "digits-tok" / manifest["id"]
    assert json.loads((artifact / "manifest.json").read_text())["program"]["requirements"] == ["tokenizers==0.23.3"]
    entry = json.loads((artifact / "manifest.json").read_text())["images"][-1]
    client = docker.DockerClient(base_url=ship_env["DOCKER_HOST"])
    image = client.images.get(entry["reference"])
    labels = image.labels
    assert labels["kiln.artifact"] == manifest["id"] and labels["kiln.model.sha256"] == manifest["model"]["sha256"]
    assert labels["org.opencontainers.image.version"] == str(manifest["version"])
    assert labels["org.opencontainers.image.source"] == manifest["program"]["source"]
    assert labels["org.opencontainers.image.created"].startswith(time.strftime("%Y-"))
    assert len(labels["org.opencontainers.image.revision"]) >= 5
    port = free_port()
    container = client.containers.run(image.id, detach=True, network_mode="host",
                                      environment={"KILN_PORT": str(port), "KILN_HTTP_PORT": "-1"})
    try:
        wait_serving(container)
        check_predictions(f"127.0.0.1:{port}", artifact, digits_program)  # the mapping code ran its tokenizer
        pip_gone = container.exec_run(["python", "-c", "import pip"], user="kiln")
        assert pip_gone.exit_code != 0  # pip ran from its wheel at build time and was not left in the image
    finally:
        container.remove(force=True)


def test_the_runtime_image_is_a_device(pushed, digits_artifact, ship_env, rpc_tracker):
    """`docker run --network host --entrypoint python IMAGE -m kiln.device ...`: the generic runtime image (TVM's
    runtime library, no compiler) registers with a tracker on the host, describes itself, runs and times the
    artifact's model sent to it with the outputs kiln.load gives here, and leaves the tracker when stopped."""
    from tvm import rpc

    from kiln.device.client import Session, devices

    client = docker.DockerClient(base_url=ship_env["DOCKER_HOST"])
    runtime = json.loads((digits_artifact / "manifest.json").read_text())["images"][-1]["runtime_reference"]
    host, port = rpc_tracker
    container = client.containers.run(runtime, detach=True, network_mode="host", entrypoint=["python"],
                                      command=["-m", "kiln.device", "--tracker", f"{host}:{port}", "--key", "image"])
    try:
        deadline = time.time() + 60
        while not devices(rpc.connect_tracker(host, port), "image"):
            container.reload()
            assert container.status != "exited" and time.time() < deadline, container.logs().decode()[-2000:]
            time.sleep(0.2)
        session = Session(rpc_tracker, "image", timeout=30)
        about = session.describe()
        assert about["versions"]["tvm"] == __import__("tvm").__version__ and about["cores"] >= 1
        manifest = json.loads((digits_artifact / "manifest.json").read_text())
        row = np.load(Path(__file__).parents[1] / "examples" / "digits" / "digits.npz")["x_test"][:1]
        feed = {"pixels": row.reshape(1, 64).astype(np.float32)}
        answer, outputs = session.measure(
            [{"name": "published", "backend": manifest["backend"],
              "path": str(digits_artifact / manifest["model"]["path"]), "settings": {"threads": 1}}],
            [feed], inputs=manifest["inputs"], outputs=manifest["outputs"], repeats=10, seconds=0.5)
        assert not answer["failed"] and answer["rounds"]["published"], answer
        want = kiln.load(digits_artifact).run(feed)["probabilities"]
        np.testing.assert_allclose(outputs["published/0/probabilities"], want, rtol=1e-5, atol=1e-6)
        del session
        container.stop(timeout=20)  # SIGTERM
        assert container.wait(timeout=30)["StatusCode"] == 0, container.logs().decode()[-2000:]
        deadline = time.time() + 30
        while devices(rpc.connect_tracker(host, port), "image"):
            assert time.time() < deadline, "the stopped device is still in the tracker's list"
            time.sleep(0.2)
    finally:
        container.remove(force=True)
