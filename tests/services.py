"""Real outside services for the shipping tests: dockerd, Debian's docker-registry, moto's S3 server with auth.

Each `start_*` returns a handle whose `stop()` ends exactly what it started. Missing binaries fail loudly with
the command that installs them (`make system-deps`): a skipped test would hide a missing part.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary: str, package: str) -> str:
    """The venv's own copy first (moto_server comes with the dev extra), then PATH."""
    beside = Path(sys.executable).parent / binary
    path = str(beside) if beside.is_file() else shutil.which(binary)
    if not path:
        raise RuntimeError(f"{binary} is not installed: run `make system-deps` (Debian package {package})")
    return path


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:] if log else ''}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up in {timeout} s: {log.read_text()[-2000:] if log else ''}")


@dataclass
class Service:
    proc: subprocess.Popen | None  # None: started by someone else (.ci/run), left running
    log: Path | None
    env: dict[str, str] = field(default_factory=dict)
    address: str = ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_dockerd(data_root: Path) -> Service:
    """A private dockerd (no bridge, no iptables: builds and containers use the host network)."""
    dockerd = need("dockerd", "docker.io")
    run = Path(tempfile.mkdtemp(prefix="kd-", dir="/tmp"))  # short: unix socket paths are limited to 108 bytes
    data_root.mkdir(parents=True, exist_ok=True)
    log = run / "dockerd.log"
    sock = f"unix://{run}/docker.sock"
    proc = subprocess.Popen([dockerd, "--data-root", str(data_root), "--exec-root", str(run / "exec"),
                             "--pidfile", str(run / "docker.pid"), "-H", sock, "--bridge=none", "--iptables=false",
                             "--ip-masq=false"], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    env = {"DOCKER_HOST": sock}

    def ping() -> bool:
        import docker

        return docker.DockerClient(base_url=sock).ping()

    wait_until(ping, 60, "dockerd", proc, log)
    return Service(proc, log, env, sock)


def start_registry(root: Path, port: int | None = None) -> Service:
    """Debian's docker-registry (distribution 2.8) with a filesystem root on 127.0.0.1."""
    binary = need("docker-registry", "docker-registry")
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
                      f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = root / "registry.log"
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"http://{address}/v2/", timeout=2).status_code == 200, 30, "registry", proc, log)
    return Service(proc, log, {}, address)


def start_s3(root: Path, buckets: tuple[str, ...] = ("models",), port: int | None = None) -> Service:
    """moto's S3 server with signatures enforced: an IAM user and key are created with the first 3
    unauthenticated calls (moto enforces auth once INITIAL_NO_AUTH_ACTION_COUNT is used up; before that it
    accepts any credentials), every later call must be signed with that key."""
    import boto3

    binary = need("moto_server", "moto[server] (pip, dev extra)")
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "moto.log"
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    endpoint = f"127.0.0.1:{port}"
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, 30, "moto_server",
               proc, log)
    anon = dict(endpoint_url=f"http://{endpoint}", region_name="us-east-1", aws_access_key_id="setup",
                aws_secret_access_key="setup")
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="kiln")
    iam.put_user_policy(UserName="kiln", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="kiln")["AccessKey"]
    env = {"KILN_S3_ENDPOINT": endpoint, "KILN_S3_ACCESS_KEY": key["AccessKeyId"],
           "KILN_S3_SECRET_KEY": key["SecretAccessKey"], "KILN_S3_SECURE": "false", "KILN_S3_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1",
                      aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    return Service(proc, log, env, endpoint)


def start_postgres(root: Path, port: int | None = None) -> Service:
    """A private PostgreSQL cluster on 127.0.0.1 (trust auth), run as the `postgres` user; database `prefect`."""
    bindir = Path("/usr/lib/postgresql")
    versions = sorted(bindir.glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: run `make system-deps` (Debian package postgresql)")
    bin_ = versions[-1].parent
    port = port or free_port()
    data = root / "pgdata"
    root.mkdir(parents=True, exist_ok=True)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        os.chmod(root, 0o755)
        for parent in root.parents:  # pytest's base folder is 0700: let the postgres user through
            if parent == Path("/tmp") or parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o111)
    subprocess.run([*as_postgres, str(bin_ / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    log = root / "postgres.log"
    proc = subprocess.Popen([*as_postgres, str(bin_ / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                             "-p", str(port), "-k", str(root)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    wait_until(lambda: subprocess.run([str(bin_ / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                      capture_output=True).returncode == 0, 30, "postgres", proc, log)
    subprocess.run([str(bin_ / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"],
                   check=True, capture_output=True)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    return Service(proc, log, {"PREFECT_API_DATABASE_CONNECTION_URL": url}, f"127.0.0.1:{port}")


# --- started once for a whole CI run (.ci/run), reused by the fixtures -----------------------------------
SHARED = {  # fixture -> the variables `up` exports for it
    "docker": ["KILN_TEST_DOCKER_HOST"],
    "registry": ["KILN_TEST_REGISTRY"],
    "s3": ["KILN_TEST_S3_ENDPOINT", "KILN_TEST_S3_ACCESS_KEY", "KILN_TEST_S3_SECRET_KEY"],
}


def shared(kind: str) -> Service | None:
    """The service .ci/run started, when its variables are set; the fixtures start their own otherwise."""
    names = SHARED[kind]
    if not all(os.environ.get(n) for n in names):
        return None
    if kind == "docker":
        return Service(None, None, {"DOCKER_HOST": os.environ[names[0]]}, os.environ[names[0]])
    if kind == "registry":
        return Service(None, None, {}, os.environ[names[0]])
    endpoint, key, secret = (os.environ[n] for n in names)
    return Service(None, None, {"KILN_S3_ENDPOINT": endpoint, "KILN_S3_ACCESS_KEY": key, "KILN_S3_SECRET_KEY": secret,
                                "KILN_S3_SECURE": "false", "KILN_S3_REGION": "us-east-1"}, endpoint)


def main(argv: list[str]) -> int:
    """`python tests/services.py up DIR` starts dockerd, docker-registry on 127.0.0.1:5000 and moto_server (auth
    enforced, bucket `models`) and writes DIR/env.sh; `down DIR` stops them."""
    import shlex

    if len(argv) != 3 or argv[1] not in ("up", "down"):
        print("usage: python tests/services.py up|down DIR", file=sys.stderr)
        return 2
    folder = Path(argv[2]).resolve()
    if argv[1] == "down":
        for pid in json.loads((folder / "pids.json").read_text()).values() if (folder / "pids.json").is_file() else []:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    docker = start_dockerd(folder / "docker")
    registry = start_registry(folder / "registry", port=5000)
    s3 = start_s3(folder / "s3")
    (folder / "pids.json").write_text(json.dumps({"docker": docker.proc.pid, "registry": registry.proc.pid,
                                                  "s3": s3.proc.pid}))
    exports = {"KILN_TEST_DOCKER_HOST": docker.env["DOCKER_HOST"], "KILN_TEST_REGISTRY": registry.address,
               **{f"KILN_TEST_S3_{k}": s3.env[f"KILN_S3_{k}"] for k in ("ENDPOINT", "ACCESS_KEY", "SECRET_KEY")}}
    (folder / "env.sh").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items()))
    print(f"dockerd {docker.address}; registry {registry.address}; s3 {s3.address} (auth enforced)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
