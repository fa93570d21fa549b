"""Runtime images: generic image size, model image build time (cold and cached), container start to SERVING,
and the gRPC latency of the digits model inside the container vs `kiln serve` on the host, same client.

    python benchmarks/images.py [--calls 2000]

Uses DOCKER_HOST when it answers, else starts a private dockerd (as the tests do) and the debootstrap base
unless KILN_BASE_IMAGE names an image the engine has. Writes benchmarks/images.json, and through
benchmarks/report.py the figures of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
WORK = ROOT / "benchmarks" / "work" / "images"

from benchmarks import report  # noqa: E402
from benchmarks.serve import artifact_for, percentiles, start  # noqa: E402
from kiln.client import connect  # noqa: E402


def engine():
    """(client, stop) for DOCKER_HOST if it answers, else for a private dockerd like the tests'."""
    import docker

    from services import start_dockerd

    if os.environ.get("DOCKER_HOST"):
        try:
            client = docker.from_env()
            client.ping()
            return client, lambda: None
        except docker.errors.DockerException:
            pass
    service = start_dockerd(Path.home() / ".cache" / "kiln-tests" / "docker")
    os.environ.update(service.env)
    return docker.from_env(), service.stop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    import subprocess

    import numpy as np

    from kiln.config import kiln_home
    from kiln.ship import RUNTIME_REPOSITORY, build_model_image, context
    from kiln.ship import engine as docker_engine

    client, stop_engine = engine()
    try:
        base = os.environ.get("KILN_BASE_IMAGE", "kiln/ubuntu:24.04")
        if base == "kiln/ubuntu:24.04":
            subprocess.run([str(ROOT / "runtime_image" / "make_base.sh"), base], check=True)
        os.environ["KILN_BASE_IMAGE"] = base
        artifact = artifact_for("digits")
        quiet = lambda message: None  # noqa: E731

        folder, digest = context.runtime_context(kiln_home() / "cache" / "image", quiet)
        t0 = time.perf_counter()
        docker_engine.build(client, tag=f"{RUNTIME_REPOSITORY}:bench", path=str(folder), nocache=True,
                            buildargs={"BASE": base}, log=quiet)
        runtime_cold = time.perf_counter() - t0
        size_mb = client.images.get(f"{RUNTIME_REPOSITORY}:bench").attrs["Size"] / 1e6
        base_mb = client.images.get(base).attrs["Size"] / 1e6
        docker_version = client.version()["Version"]

        timings = {}
        for label, nocache in (("cold (no layer cache)", True), ("cached", False)):
            t0 = time.perf_counter()
            docker_engine.build(client, tag="kiln-bench/digits:latest", nocache=nocache,
                                fileobj=context.model_context(artifact, [*_files(artifact)]),
                                buildargs={"RUNTIME": f"{RUNTIME_REPOSITORY}:bench"}, log=quiet)
            timings[label] = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_model_image(artifact, "kiln-bench/digits", push=False, log=quiet)  # the product path, end to end
        product_build = time.perf_counter() - t0
        model_mb = client.images.get("kiln-bench/digits:latest").attrs["Size"] / 1e6

        from conftest import free_port

        port = free_port()
        t0 = time.perf_counter()
        container = client.containers.run("kiln-bench/digits:latest", detach=True, network_mode="host",
                                          environment={"KILN_PORT": str(port), "KILN_HTTP_PORT": "-1"})
        try:
            while "serving " not in container.logs().decode():
                time.sleep(0.02)
            start_to_serving = time.perf_counter() - t0
            row = np.load(ROOT / "examples" / "digits" / "digits.npz")["x_test"][0].tolist()
            host_proc, host_address = start([str(Path(sys.executable).parent / "kiln"), "serve", str(artifact),
                                             "--port", "0", "--http-port", "-1", "--no-log-requests"])
            rounds = {"container": [], "host": []}
            try:
                with connect(f"127.0.0.1:{port}", artifact=artifact) as in_container, \
                        connect(host_address, artifact=artifact) as on_host:
                    for _ in range(5):  # alternating rounds: both see the same machine noise
                        rounds["container"].append(percentiles(lambda: in_container.predict(pixels=row),
                                                               args.calls // 5))
                        rounds["host"].append(percentiles(lambda: on_host.predict(pixels=row), args.calls // 5))
            finally:
                host_proc.terminate()
        finally:
            container.remove(force=True)
        p50 = {k: float(np.median([r[0] for r in v])) for k, v in rounds.items()}
        p99 = {k: float(np.median([r[1] for r in v])) for k, v in rounds.items()}
    finally:
        stop_engine()

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpu": cpu, "cores": os.cpu_count()}, "base": base,
              "base_mb": base_mb, "docker": docker_version, "runtime_mb": size_mb,
              "runtime_build_s": runtime_cold, "model_build_cold_s": timings["cold (no layer cache)"],
              "model_build_cached_s": timings["cached"], "build_model_image_s": product_build, "model_mb": model_mb,
              "start_to_serving_s": start_to_serving, "container_us": [p50["container"], p99["container"]],
              "host_us": [p50["host"], p99["host"]], "container_over_host": p50["container"] / p50["host"]}
    print(json.dumps(result, indent=1))
    (ROOT / "benchmarks" / "images.json").write_text(json.dumps(result, indent=1) + "\n")
    report.rewrite()


def _files(artifact: Path) -> list[str]:
    from kiln.artifact.layout import MANIFEST
    from kiln.artifact.manifest import Manifest

    return [*Manifest.read(artifact).files, MANIFEST]


if __name__ == "__main__":
    main()
