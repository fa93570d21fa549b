"""`kiln up` / `kiln down`: kiln as a service on this machine.

`up` starts what is not running yet, in order: a Prefect server (SQLite under PREFECT_HOME, or PostgreSQL when
PREFECT_API_DATABASE_CONNECTION_URL says so), the `kiln` process work pool and the deployments of
deployments/prefect.yaml, a worker, and the web app. Each long-running part is its own process group, recorded
in KILN_HOME/service/NAME.json with its pid and start time; `down` stops exactly those (a reused pid is left
alone) and nothing else. Everything binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kiln.config import Settings, environment, settings
from kiln.errors import KilnError
from kiln.fs import checkout_file

BIN = Path(sys.executable).parent
ORDER = ("prefect-server", "worker", "web")
Log = Callable[[str], None]


def repo_root() -> Path:
    return checkout_file("deployments/prefect.yaml", doing="`kiln up`").parents[1]


@dataclass
class ServiceConfig:
    home: Path
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    web_port: int = 8000
    worker_limit: int = 1
    pool: str = "kiln"
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: Settings) -> ServiceConfig:
        return cls(home=cfg.home_dir / "service", host=cfg.host, prefect_port=cfg.prefect_port,
                   web_port=cfg.web_port, worker_limit=cfg.worker_limit)

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def ui(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def web(self) -> str:
        return f"http://{self.host}:{self.web_port}"


def _record(cfg: ServiceConfig, name: str) -> Path:
    return cfg.home / f"{name}.json"


def running(cfg: ServiceConfig, name: str) -> int | None:
    """The pid of NAME if the process kiln recorded is still that process (same start time)."""
    import psutil

    path = _record(cfg, name)
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    try:
        proc = psutil.Process(info["pid"])
        if abs(proc.create_time() - info["started"]) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
            return info["pid"]
    except psutil.Error:
        pass
    return None


def _start(cfg: ServiceConfig, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    import psutil

    cfg.home.mkdir(parents=True, exist_ok=True)
    log = open(cfg.home / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: `down` stops it and its children
    started = psutil.Process(proc.pid).create_time()
    _record(cfg, name).write_text(json.dumps({"pid": proc.pid, "started": started, "cmd": cmd}))
    return proc.pid


def _wait(url: str, what: str, cfg: ServiceConfig, name: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if running(cfg, name) is None:
            break
        time.sleep(0.5)
    tail = (cfg.home / f"{name}.log").read_text(errors="replace")[-1500:]
    raise KilnError(f"{what} did not come up at {url}", hint=f"see {cfg.home / (name + '.log')}:\n{tail}")


def _run(cmd: list[str], env: dict[str, str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise KilnError(f"{what} failed (exit {proc.returncode})", hint=(proc.stdout + proc.stderr)[-1500:])


def web_token(cfg: ServiceConfig, given: str = "") -> str:
    """KILN_WEB_TOKEN, else the one `up` made before (KILN_HOME/service/web-token, mode 0600), else a new one."""
    if given:
        return given
    path = cfg.home / "web-token"
    if path.is_file():
        return path.read_text().strip()
    cfg.home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def up(cfg: ServiceConfig | None = None, log: Log = print) -> dict[str, str]:
    given = settings()  # every setting is checked here, before anything starts (the web app reads them too)
    cfg = cfg or ServiceConfig.of(given)
    root = repo_root()
    token = web_token(cfg, given.web_token)
    from web.settings import WebSettings

    WebSettings.of(given, token=token)  # the web app's settings fail here, with the variable named, not in its log
    env = {**environment(), **cfg.env, "PREFECT_API_URL": cfg.api, "KILN_ROOT": str(root),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    if given.prefect_home:  # Prefect creates its home without parents and fails obscurely
        given.prefect_home.expanduser().mkdir(parents=True, exist_ok=True)

    if running(cfg, "prefect-server"):  # alive; it may still be starting, or stopping
        try:
            _wait(f"{cfg.api}/health", "the Prefect server", cfg, "prefect-server", timeout=30)
            log(f"prefect server: already running ({cfg.ui})")
        except KilnError:
            if running(cfg, "prefect-server"):
                raise KilnError(f"the Prefect server kiln started (pid {running(cfg, 'prefect-server')}) runs but "
                                f"does not answer at {cfg.api}", hint="run `kiln down`, then `kiln up`") from None
    if not running(cfg, "prefect-server"):
        server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        _start(cfg, "prefect-server", [str(BIN / "prefect"), "server", "start", "--host", cfg.host,
                                       "--port", str(cfg.prefect_port)], server_env)
        _wait(f"{cfg.api}/health", "the Prefect server", cfg, "prefect-server")
        log(f"prefect server: started ({cfg.ui})")
    _run([str(BIN / "prefect"), "work-pool", "create", cfg.pool, "--type", "process", "--overwrite"], env,
         "creating the work pool")
    _run([str(BIN / "prefect"), "block", "register", "-m", "tasks.blocks"], env, "registering the kiln S3 block",
         cwd=root)
    _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
          str(root / "deployments" / "prefect.yaml")], env, "applying deployments/prefect.yaml", cwd=root)
    log("deployments: optimize, reoptimize (cron 0 3 * * * UTC) applied to work pool " + cfg.pool)
    if running(cfg, "worker"):
        log("worker: already running")
    else:
        _start(cfg, "worker", [str(BIN / "prefect"), "worker", "start", "--pool", cfg.pool, "--type", "process",
                               "--limit", str(cfg.worker_limit), "--name", f"kiln-{os.uname().nodename}"], env,
               cwd=root)
        log(f"worker: started (pool {cfg.pool}, {cfg.worker_limit} run(s) at a time)")
    if running(cfg, "web"):
        log(f"web: already running ({cfg.web})")
    else:
        _start(cfg, "web", [str(BIN / "python"), "-m", "uvicorn", "--factory", "web.app:create_app", "--host",
                            cfg.host, "--port", str(cfg.web_port), "--no-access-log"],
               {**env, "KILN_WEB_TOKEN": token, "KILN_PREFECT_UI_URL": cfg.ui}, cwd=root)
        _wait(f"{cfg.web}/healthz", "the web app", cfg, "web")
        log(f"web: started ({cfg.web})")
    return {"ui": cfg.ui, "api": cfg.api, "web": cfg.web, "token": token}


def down(cfg: ServiceConfig | None = None, log: Log = print, timeout: float = 30) -> list[str]:
    """Stop what `up` started (web, worker, server, in that order); returns the names stopped."""
    cfg = cfg or ServiceConfig.of(settings())
    stopped = []
    for name in reversed(ORDER):
        pid = running(cfg, name)
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None
            deadline = time.time() + timeout
            while pid and running(cfg, name) and time.time() < deadline:
                time.sleep(0.2)
            if pid and running(cfg, name):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(name)
            log(f"{name}: stopped")
        _record(cfg, name).unlink(missing_ok=True)
    return stopped
