"""Where a program comes from: a local path, a file:// URI, an s3:// URI, or a model registry's URI (MLflow's
models:/, runs:/, mlflow-artifacts:/; kiln.registries) fetched into KILN_HOME."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from kiln.config import kiln_home
from kiln.errors import ProgramError, StorageError
from kiln.program.archive import is_archive

REMOTE_SCHEMES = ("s3://", "file://")


def schemes() -> tuple[str, ...]:
    """Every URI scheme a program location may have (a plain path aside)."""
    from kiln import registries

    return REMOTE_SCHEMES + registries.source_schemes()


def is_location(source: object) -> bool:
    """A local path (absolute), or a URI of a scheme kiln resolves: what a webhook's source may be."""
    return isinstance(source, str) and (source.startswith("/") or source.startswith(schemes()))


def localize(location: str) -> str:
    """A program location as a local path: file:// is a path; s3:// is fetched into KILN_HOME/programs/s3."""
    if location.startswith("file://"):
        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            raise ProgramError("file:// URIs must name a local path (file:///path)", where=location)
        return unquote(parsed.path)
    if location.startswith("s3://"):
        return str(fetch_s3_program(location, kiln_home() / "programs" / "s3"))
    from kiln import registries

    if registry := registries.for_source(location):
        return str(registry.resolve(location, kiln_home() / "programs" / registry.name, fetch_s3_program))
    return location


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
