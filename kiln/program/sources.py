"""Where a program comes from: a local path, a file:// URI, an s3:// URI or an MLflow model (models:/, runs:/,
mlflow-artifacts:/) fetched into KILN_HOME."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from kiln.config import kiln_home
from kiln.errors import ProgramError, StorageError
from kiln.program.archive import is_archive

REMOTE_SCHEMES = ("s3://", "file://")
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def localize(location: str) -> str:
    """A program location as a local path: file:// is a path; s3:// is fetched into KILN_HOME/programs/s3."""
    if location.startswith("file://"):
        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            raise ProgramError("file:// URIs must name a local path (file:///path)", where=location)
        return unquote(parsed.path)
    if location.startswith("s3://"):
        return str(fetch_s3_program(location, kiln_home() / "programs" / "s3"))
    if location.startswith(MLFLOW_SCHEMES):
        return str(fetch_mlflow_program(location, kiln_home() / "programs" / "mlflow"))
    return location


def fetch_mlflow_program(source: str, dest_root: Path) -> Path:
    """An MLflow model version, logged model, run artifact or artifact folder, fetched through the tracking
    server (KILN_MLFLOW_TRACKING_URI): the kiln program it holds, else its ONNX model as a bare-model program."""
    from kiln.registries.mlflow import Mlflow, program_in

    with Mlflow() as server:
        location = server.artifact_uri(source)
        if location.startswith("s3://"):  # a server that hands out its store's URIs instead of serving them
            return program_in(fetch_s3_program(location.rstrip("/"), dest_root))
        return program_in(server.download(location, source, dest_root))


def fetch_s3_program(uri: str, dest_root: Path) -> Path:
    """A program given as s3://: an archive or .onnx object (downloaded as is), or a folder prefix (every
    object below it), cached under dest_root by URI and content."""
    from kiln.artifact.remote import ObjectStore, parse_uri

    _, key = parse_uri(uri)
    if not key:
        raise StorageError("give the program's key, not only the bucket", where=uri)
    store = ObjectStore()
    name = key.rsplit("/", 1)[-1]
    if is_archive(Path(name)) or name.lower().endswith(".onnx"):
        return store.download_object(uri, dest_root)
    return store.download_prefix(uri, dest_root)
