"""MLflow's model registry, both ways, through its REST API: where a model version's files are, and tags on it.

MLflow 3 gives a model logged with `mlflow.onnx.log_model(..., registered_model_name=N)` a version whose source
is `models:/m-<id>` (a logged model, not a run), and its `model_version.created` webhook carries that source with
no run id. The files live under `mlflow-artifacts:/...`, served by the tracking server itself
(`mlflow server --serve-artifacts`), so everything here goes through the one URL in KILN_MLFLOW_TRACKING_URI
(or MLflow's own MLFLOW_TRACKING_URI), authenticated as MLflow's clients are (MLFLOW_TRACKING_TOKEN, or
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD). httpx, not the mlflow package: kiln needs a handful of calls.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from kiln.errors import ProgramError, ServiceError
from kiln.retry import with_retries

TIMEOUT_S = 60.0


class RegistryError(ServiceError):
    """The MLflow server refused or could not be reached."""


def tracking_uri() -> str:
    from kiln.config import settings

    uri = settings().mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise ProgramError("an MLflow source needs the MLflow server it lives on",
                           hint="set KILN_MLFLOW_TRACKING_URI (e.g. http://mlflow:5000) where the flow runs")
    return uri.rstrip("/")


class Mlflow:
    """The few REST calls kiln makes, each retried while the failure is transient (connection, 5xx, 429)."""

    def __init__(self, uri: str | None = None):
        import httpx

        self.uri = (uri or tracking_uri()).rstrip("/")
        headers = {}
        auth = None
        if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {token}"
        elif user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
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


TAG_LIMIT = 4000  # MLflow keeps tag values up to 5000 characters


def outcome_tags(result: dict[str, Any] | None, error: str | None = None, run: str | None = None) -> dict[str, str]:
    """What the registry shows of a kiln run: kiln.status (published, kept-current or failed), kiln.selected,
    kiln.speedup (against onnxruntime), kiln.artifact (its upload URI where it was uploaded), kiln.image and
    kiln.message; kiln.run is the Prefect flow run."""
    tags = {"kiln.run": run} if run else {}
    if result is None:
        return {**tags, "kiln.status": "failed", "kiln.message": (error or "the run failed")[:TAG_LIMIT]}
    tags["kiln.status"] = "published" if result.get("published") else "kept-current"
    tags["kiln.selected"] = str(result.get("selected"))
    if result.get("speedup_vs_baseline") is not None:
        tags["kiln.speedup"] = f"{result['speedup_vs_baseline']:.2f}x"
    if result.get("upload") or result.get("artifact"):
        tags["kiln.artifact"] = str(result.get("upload") or result.get("artifact"))
    if result.get("image"):
        tags["kiln.image"] = str(result["image"])
    if result.get("message"):
        tags["kiln.message"] = str(result["message"])[:TAG_LIMIT]
    return tags
