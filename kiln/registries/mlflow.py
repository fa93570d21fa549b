"""MLflow's model registry, both ways, through its REST API: where a model version's files are, tags on it, and
its signed webhook deliveries.

MLflow 3 gives a model logged with `mlflow.onnx.log_model(..., registered_model_name=N)` a version whose source
is `models:/m-<id>` (a logged model, not a run), and its `model_version.created` webhook carries that source with
no run id. The files live under `mlflow-artifacts:/...`, served by the tracking server itself
(`mlflow server --serve-artifacts`), so everything here goes through the one URL in KILN_MLFLOW_TRACKING_URI
(or MLflow's own MLFLOW_TRACKING_URI), authenticated as MLflow's clients are (MLFLOW_TRACKING_TOKEN, or
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD; all read by kiln.config). httpx, not the mlflow package:
kiln needs a handful of calls.

MLflow signs "{delivery_id}.{timestamp}.{body}" with HMAC-SHA256 (header `X-MLflow-Signature: v1,<base64>`,
`X-MLflow-Delivery-Id`, `X-MLflow-Timestamp` in Unix seconds); a delivery outside the time window is refused,
so a captured one cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

from kiln.errors import ProgramError, ServiceError
from kiln.registries.base import Registry, Rejected, Trigger, json_object
from kiln.retry import with_retries

if TYPE_CHECKING:
    from kiln.config import Settings

TIMEOUT_S = 60.0


class RegistryError(ServiceError):
    """The MLflow server refused or could not be reached."""


def tracking_uri() -> str:
    from kiln.config import settings

    uri = settings().mlflow_tracking_uri or ""
    if not uri.startswith(("http://", "https://")):
        raise ProgramError("an MLflow source needs the MLflow server it lives on",
                           hint="set KILN_MLFLOW_TRACKING_URI (e.g. http://mlflow:5000) where the flow runs")
    return uri.rstrip("/")


class Mlflow:
    """The few REST calls kiln makes, each retried while the failure is transient (connection, 5xx, 429)."""

    def __init__(self, uri: str | None = None):
        import httpx

        from kiln.config import settings

        cfg = settings()
        self.uri = (uri or tracking_uri()).rstrip("/")
        headers = {}
        auth = None
        if cfg.mlflow_tracking_token:
            headers["Authorization"] = f"Bearer {cfg.mlflow_tracking_token}"
        elif cfg.mlflow_tracking_username:
            auth = (cfg.mlflow_tracking_username, cfg.mlflow_tracking_password or "")
        self.http = httpx.Client(base_url=self.uri, headers=headers, auth=auth, timeout=TIMEOUT_S,
                                 follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Mlflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        import httpx

        def once():
            resp = self.http.request(method, path, **kwargs)
            if resp.status_code >= 400:
                raise _refused(resp, what, self.uri)
            return resp.json() if resp.content else {}

        def explain(exc: Exception) -> ServiceError:
            transient = isinstance(exc, httpx.TransportError)
            return RegistryError(f"cannot reach the MLflow server for {what}: {type(exc).__name__}: {exc}",
                                 where=self.uri, transient=transient,
                                 hint="check KILN_MLFLOW_TRACKING_URI and that the server is up")

        return with_retries(once, explain)

    # -- where a source's files are ---------------------------------------------------------------------------
    def artifact_uri(self, source: str) -> str:
        """The artifact location behind models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-<id> or
        runs:/RUN_ID/PATH; mlflow-artifacts:/ and other locations are returned as they are."""
        if source.startswith("runs:/"):
            run_id, _, sub = source[len("runs:/"):].strip("/").partition("/")
            run = self._call("GET", "/api/2.0/mlflow/runs/get", f"run {run_id}", params={"run_id": run_id})
            base = run["run"]["info"]["artifact_uri"].rstrip("/")
            return f"{base}/{sub}" if sub else base
        if not source.startswith("models:/"):
            return source
        ref = source[len("models:/"):].strip("/")
        if ref.startswith("m-") and "/" not in ref:  # MLflow 3's logged model
            got = self._call("GET", f"/api/2.0/mlflow/logged-models/{quote(ref)}", f"logged model {ref}")
            return got["model"]["info"]["artifact_uri"]
        if "@" in ref:
            name, _, alias = ref.rpartition("@")
            got = self._call("GET", "/api/2.0/mlflow/registered-models/alias", f"{name}@{alias}",
                             params={"name": name, "alias": alias})
            version = got["model_version"]["version"]
        else:
            name, _, version = ref.rpartition("/")
            if not name or not version:
                raise ProgramError(f"cannot read {source!r} as an MLflow model URI",
                                   hint="write models:/NAME/VERSION, models:/NAME@ALIAS or models:/m-<id>")
        got = self._call("GET", "/api/2.0/mlflow/model-versions/get-download-uri", f"{name} version {version}",
                         params={"name": name, "version": version})
        return got["artifact_uri"]

    def download(self, location: str, source: str, dest_root: Path) -> Path:
        """The files at `location` (an artifact URI this server serves, or a local path) in a fresh folder under
        dest_root, replaced whole and never half-written; `source` names it in messages and the folder."""
        if location.startswith("mlflow-artifacts:"):
            parsed = urlparse(location)
            if parsed.netloc:  # mlflow-artifacts://host:port/path names its server
                with Mlflow(f"http://{parsed.netloc}") as server:
                    return server._download_proxied(parsed.path.strip("/"), source, dest_root)
            return self._download_proxied(parsed.path.strip("/"), source, dest_root)
        local = Path(urlparse(location).path if location.startswith("file:") else location)
        if local.is_absolute() and local.exists():
            return local
        raise ProgramError(f"{source} is stored at {location}, which kiln cannot read from here",
                           hint="start the MLflow server with --serve-artifacts (the default), so its artifacts "
                                "are served over its own HTTP API")

    def _download_proxied(self, path: str, source: str, dest_root: Path) -> Path:
        files = self._list(path)
        if not files:
            raise ProgramError(f"{source} has no files (at mlflow-artifacts:/{path})",
                               hint="log the model with its files (mlflow.onnx.log_model)")
        dest_root.mkdir(parents=True, exist_ok=True)
        final = dest_root / _folder_name(source)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest_root))
        try:
            for rel in files:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fetch(f"{path}/{rel}", target)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _list(self, path: str, prefix: str = "") -> list[str]:
        """Every file below `path`, relative to it (MLflow lists one level at a time)."""
        got = self._call("GET", "/api/2.0/mlflow-artifacts/artifacts", f"the files at {path}",
                         params={"path": f"{path}/{prefix}".rstrip("/")})
        out = []
        for entry in got.get("files", []):
            rel = f"{prefix}{entry['path'].rsplit('/', 1)[-1]}"
            if ".." in Path(rel).parts or rel.startswith("/"):
                raise ProgramError(f"the MLflow server listed an unsafe path {rel!r}", where=path)
            out += self._list(path, rel + "/") if entry.get("is_dir") else [rel]
        return out

    def _fetch(self, path: str, target: Path) -> None:
        import httpx

        def once() -> None:
            with self.http.stream("GET", f"/api/2.0/mlflow-artifacts/artifacts/{quote(path)}") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _refused(resp, f"file {path}", self.uri)
                with open(target, "wb") as out:
                    for chunk in resp.iter_bytes(1 << 20):
                        out.write(chunk)

        def explain(exc: Exception) -> ServiceError:
            return RegistryError(f"cannot download {path} from the MLflow server: {type(exc).__name__}: {exc}",
                                 where=self.uri, transient=isinstance(exc, httpx.TransportError))

        with_retries(once, explain)

    # -- the result, written back -----------------------------------------------------------------------------
    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._call("POST", "/api/2.0/mlflow/model-versions/set-tag", f"tag {key} on {name} version {version}",
                       json={"name": name, "version": str(version), "key": key, "value": str(value)})


def _refused(resp, what: str, uri: str) -> RegistryError:
    """MLflow's own words ({"error_code": ..., "message": ...}) where it gave them."""
    try:
        body = resp.json()
        detail = f"{body.get('error_code', resp.status_code)}: {body.get('message', '')}".strip()
    except ValueError:
        detail = f"HTTP {resp.status_code}: {resp.text[:200]}"
    transient = resp.status_code >= 500 or resp.status_code == 429
    hint = ("check the model name and version in the registry" if resp.status_code == 404 else
            "check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD" if resp.status_code in (401, 403)
            else None)
    return RegistryError(f"the MLflow server refused {what}: {detail}", where=uri, hint=hint, transient=transient)


def _folder_name(source: str) -> str:
    import hashlib

    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.split(":/", 1)[-1].strip("/"))[-60:]
    return f"{readable}-{hashlib.sha256(source.encode()).hexdigest()[:10]}"


def program_in(folder: Path) -> Path:
    """What kiln optimizes in a downloaded MLflow folder: the kiln program it holds, else its ONNX model (an
    MLflow ONNX flavour folder: MLmodel + model.onnx), as a bare-model program."""
    if (folder / "program.py").is_file() or not folder.is_dir():
        return folder
    models = sorted(folder.rglob("*.onnx"))
    if not models:
        raise ProgramError(f"no program.py and no .onnx model in the MLflow artifacts ({folder})",
                           hint="log the model with mlflow.onnx.log_model, or log a kiln program folder")
    return next((m for m in models if m.name == "model.onnx"), models[0])


class MlflowRegistry(Registry):
    name = "mlflow"
    schemes = ("models:/", "runs:/", "mlflow-artifacts:/")
    tags_versions = True

    def resolve(self, source: str, dest_root: Path, fetch_other: Callable[[str, Path], Path]) -> Path:
        """An MLflow model version, logged model, run artifact or artifact folder, fetched through the tracking
        server: the kiln program it holds, else its ONNX model as a bare-model program."""
        with Mlflow() as server:
            location = server.artifact_uri(source)
            if location.startswith("s3://"):  # a server that hands out its store's URIs instead of serving them
                return program_in(fetch_other(location.rstrip("/"), dest_root))
            return program_in(server.download(location, source, dest_root))

    def tag(self, model: str, version: str, tags: dict[str, str]) -> None:
        with Mlflow() as server:
            server.set_version_tags(model, version, tags)

    def delivery(self, headers: dict[str, str], body: bytes, cfg: Settings, now: float | None = None
                 ) -> Trigger | None:
        if not cfg.mlflow_webhook_secret:
            raise Rejected(503, "KILN_MLFLOW_WEBHOOK_SECRET is not set on the kiln web service")
        signature = headers.get("x-mlflow-signature")
        delivery = headers.get("x-mlflow-delivery-id")
        stamp = headers.get("x-mlflow-timestamp")
        if not (signature and delivery and stamp):
            raise Rejected(401, "unsigned: X-MLflow-Signature, X-MLflow-Delivery-Id and X-MLflow-Timestamp are "
                                "required")
        try:
            sent = int(stamp)
        except ValueError:
            raise Rejected(401, f"X-MLflow-Timestamp {stamp!r} is not Unix seconds") from None
        version, _, given = signature.partition(",")
        expected = base64.b64encode(hmac.new(cfg.mlflow_webhook_secret.encode(),
                                             f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest())
        if version != "v1" or not hmac.compare_digest(given.encode(), expected):
            raise Rejected(403, "the signature does not match (X-MLflow-Signature)")
        if abs((now or time.time()) - sent) > cfg.webhook_window_s:
            raise Rejected(403, f"stale delivery: its timestamp is more than {cfg.webhook_window_s} s from now")
        payload = json_object(body)
        event = f"{payload.get('entity')}.{payload.get('action')}"
        if event != "model_version.created":
            return None
        data = payload.get("data") if isinstance(payload.get("data"), dict) else payload
        name, ver = data.get("name"), data.get("version")
        if not isinstance(name, str) or not name or ver in (None, ""):
            raise Rejected(400, "model_version.created needs data.name and data.version")
        return Trigger(self.name, name, str(ver), data.get("source"), event)
