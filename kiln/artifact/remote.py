"""Artifacts in S3-compatible object storage (MinIO, S3, moto): upload, verify, pull.

Layout: s3://BUCKET/PREFIX/NAME/ID/<artifact files>; manifest.json goes up after them, so a half-uploaded
artifact is never taken for a whole one, then PREFIX/NAME/LATEST (the id), so pulling NAME gets the newest
complete one. Every object carries its sha256 in metadata; uploads are checked against it and downloads
against the manifest before the artifact enters the local store. Only transient errors (connection refused,
timeouts, 5xx, SlowDown) are retried; a wrong key or a missing bucket fails at once.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from kiln.artifact.layout import MANIFEST
from kiln.artifact.manifest import Manifest, Upload
from kiln.artifact.store import ArtifactStore, record, verify
from kiln.config import Settings, settings
from kiln.errors import StorageError
from kiln.fs import atomic_dir, atomic_file, file_sha256, json_sha256, tree_files
from kiln.retry import with_retries

SHA_KEY = "sha256"  # stored as x-amz-meta-sha256
LATEST = "LATEST"  # PREFIX/NAME/LATEST holds the id of the newest artifact uploaded under NAME
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
T = TypeVar("T")


class S3Settings(BaseModel):
    endpoint: str
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None
    secure: bool = True
    part_size_mb: int = 16  # files larger than this go up in parts (S3's minimum part is 5 MiB)
    attempts: int = 4

    @classmethod
    def from_settings(cls, cfg: Settings | None = None) -> S3Settings:
        """The KILN_S3_* settings; a clear error when no endpoint is configured."""
        cfg = cfg or settings()
        endpoint = cfg.s3_endpoint.strip()
        if not endpoint:
            raise StorageError("no object storage configured (KILN_S3_ENDPOINT is not set)",
                               hint="export KILN_S3_ENDPOINT=host:port, KILN_S3_ACCESS_KEY, KILN_S3_SECRET_KEY "
                                    "(and KILN_S3_SECURE=false for plain http); flows can also read a Prefect "
                                    "kiln-s3 block named by KILN_S3_BLOCK")
        return cls(endpoint=re.sub(r"^https?://", "", endpoint).rstrip("/"), access_key=cfg.s3_access_key,
                   secret_key=cfg.s3_secret_key, region=cfg.s3_region, secure=cfg.s3_secure,
                   part_size_mb=cfg.s3_part_mb)


def parse_uri(uri: str) -> tuple[str, str]:
    """s3://bucket[/prefix] -> (bucket, prefix without slashes at either end)."""
    if not uri.startswith("s3://"):
        raise StorageError("not an s3:// URI", where=uri, hint="write s3://BUCKET/PREFIX")
    bucket, _, prefix = uri[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise StorageError(f"{bucket!r} is not a valid bucket name", where=uri,
                           hint="3-63 lowercase letters, digits, dots and hyphens")
    prefix = prefix.strip("/")
    if any(part in {"", ".", ".."} for part in prefix.split("/")) and prefix:
        raise StorageError("the prefix has an empty, '.' or '..' part", where=uri)
    return bucket, prefix


class ObjectStore:
    """One S3 endpoint; every call is retried on transient failures with exponential backoff."""

    def __init__(self, s3: S3Settings | None = None, on_retry: Callable[[str], None] | None = None):
        import urllib3
        from minio import Minio

        self.settings = s3 or S3Settings.from_settings()
        self.on_retry = on_retry
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=120), retries=False, maxsize=8)
        self.client = Minio(self.settings.endpoint, access_key=self.settings.access_key,
                            secret_key=self.settings.secret_key, secure=self.settings.secure,
                            region=self.settings.region, http_client=http)

    # --- errors -------------------------------------------------------------------------------------------
    def _explain(self, exc: Exception, what: str, uri: str) -> StorageError:
        from minio.error import InvalidResponseError, S3Error, ServerError

        endpoint = f"{'https' if self.settings.secure else 'http'}://{self.settings.endpoint}"
        if isinstance(exc, S3Error):
            if exc.code in _AUTH_CODES:
                return StorageError(f"{endpoint} refused the credentials while {what} ({exc.code})", where=uri,
                                    hint="check KILN_S3_ACCESS_KEY / KILN_S3_SECRET_KEY and the key's permissions")
            if exc.code == "NoSuchBucket":
                return self._missing_bucket(exc.bucket_name or parse_uri(uri)[0], uri)
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                return StorageError(f"no such object while {what}", where=uri)
            return StorageError(f"{endpoint} answered {exc.code} while {what}: {exc.message}", where=uri,
                                transient=exc.code in _TRANSIENT_CODES)
        if isinstance(exc, ServerError | InvalidResponseError):
            status = getattr(exc, "status_code", None) or getattr(exc, "_code", None)
            return StorageError(f"{endpoint} answered HTTP {status} while {what}", where=uri,
                                transient=not status or int(status) >= 500 or int(status) == 429)
        return StorageError(f"cannot reach {endpoint} while {what} ({type(exc).__name__})", where=uri,
                            hint="is the S3/MinIO server running, and are KILN_S3_ENDPOINT / KILN_S3_SECURE right?",
                            transient=True)

    def call(self, what: str, uri: str, fn: Callable[[], T]) -> T:
        return with_retries(fn, lambda exc: self._explain(exc, what, uri), attempts=self.settings.attempts,
                            on_retry=self.on_retry)

    def check(self, uri: str) -> None:
        """The URI is valid, the server answers, the credentials are accepted, the bucket exists."""
        bucket, _ = parse_uri(uri)
        if not self.call("checking the bucket", uri, lambda: self.client.bucket_exists(bucket)):
            raise self._missing_bucket(bucket, uri)

    def _missing_bucket(self, bucket: str, uri: str) -> StorageError:
        return StorageError(f"bucket {bucket!r} does not exist on {self.settings.endpoint}", where=uri,
                            hint="create it first (e.g. `mc mb`), or fix the bucket in the URI")

    # --- upload -------------------------------------------------------------------------------------------
    def upload_artifact(self, folder: Path, uri: str, progress: Callable[[int, int], None] | None = None) -> str:
        """Upload an artifact folder under URI/NAME/ID/ and verify every object; returns the artifact's URI.

        The artifact's files are only read; once all is up, the upload is appended to its manifest (not hashed).
        The manifest goes up last, so readers never see a partial artifact.
        """
        manifest = Manifest.read(folder)
        bucket, prefix = parse_uri(uri)
        self.check(uri)
        base = "/".join(p for p in (prefix, manifest.name, manifest.id) if p)
        files = {**manifest.files, MANIFEST: file_sha256(folder / MANIFEST)}
        order = [rel for rel in sorted(files) if rel != MANIFEST] + [MANIFEST]
        part = max(5, self.settings.part_size_mb) * 1024 * 1024
        for i, rel in enumerate(order):
            key = f"{base}/{rel}"
            target = f"s3://{bucket}/{key}"
            self.call(f"uploading {rel}", target, lambda rel=rel, key=key: self.client.fput_object(
                bucket_name=bucket, object_name=key, file_path=str(folder / rel), metadata={SHA_KEY: files[rel]},
                part_size=part))
            stat = self.call(f"verifying {rel}", target, lambda key=key: self.client.stat_object(bucket, key))
            recorded = (stat.metadata or {}).get(f"x-amz-meta-{SHA_KEY}")
            if recorded != files[rel] or stat.size != (folder / rel).stat().st_size:
                raise StorageError(f"{rel} did not arrive intact (size {stat.size}, sha256 {recorded})", where=target,
                                   transient=True)
            if progress:
                progress(i + 1, len(order))
        # last: NAME/LATEST names this artifact, so `pull s3://.../NAME` finds the newest complete upload
        pointer = "/".join(p for p in (prefix, manifest.name, LATEST) if p)
        data = manifest.id.encode()
        self.call("updating LATEST", f"s3://{bucket}/{pointer}", lambda: self.client.put_object(
            bucket, pointer, io.BytesIO(data), len(data), content_type="text/plain"))
        remote = f"s3://{bucket}/{base}"
        record(folder, "uploads", Upload(uri=remote, at=datetime.now(UTC).isoformat()))
        return remote

    # --- plain downloads (programs) ----------------------------------------------------------------------
    def download_object(self, uri: str, dest_root: Path) -> Path:
        """One object, cached under dest_root by URI and etag; returns the local file."""
        bucket, key = parse_uri(uri)
        self.check(uri)
        name = key.rsplit("/", 1)[-1]
        stat = self.call("reading", uri, lambda: self.client.stat_object(bucket, key))
        dest = dest_root / json_sha256([uri, stat.etag])[:24] / name
        if not dest.is_file():
            with atomic_file(dest) as tmp:
                self.call("downloading", uri, lambda: self.client.fget_object(bucket, key, str(tmp)))
        return dest

    def download_prefix(self, uri: str, dest_root: Path) -> Path:
        """Every object below a prefix, as a folder cached under dest_root by URI and etags."""
        bucket, key = parse_uri(uri)
        self.check(uri)
        objects = self.call("listing the folder", uri, lambda: self._list(bucket, key + "/"))
        if not objects:
            raise StorageError("no program here (no objects below this prefix)", where=uri,
                               hint="give a program folder's prefix, a .zip/.tar.gz or a .onnx object")
        dest = dest_root / json_sha256([uri, sorted((o.object_name, o.etag) for o in objects)])[:24] / \
            key.rsplit("/", 1)[-1]
        if not dest.is_dir():
            with atomic_dir(dest) as staged:
                for obj in objects:
                    rel = obj.object_name[len(key) + 1:]
                    if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                        raise StorageError(f"unsafe object name {obj.object_name!r}", where=uri)
                    target = staged.path / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.call(f"downloading {rel}", uri,
                              lambda o=obj, t=target: self.client.fget_object(bucket, o.object_name, str(t)))
        return dest

    def _list(self, bucket: str, prefix: str) -> list:
        from minio.error import S3Error

        try:
            return list(self.client.list_objects(bucket, prefix=prefix, recursive=True))
        except S3Error as exc:
            # moto with auth enforced rejects signed listings whose prefix holds a '/' (seen here; S3 and MinIO
            # accept them): list by the first path segment and filter
            if exc.code != "SignatureDoesNotMatch" or "/" not in prefix.rstrip("/"):
                raise
            head = prefix.split("/", 1)[0]
            return [o for o in self.client.list_objects(bucket, prefix=head, recursive=True)
                    if o.object_name.startswith(prefix)]

    # --- download -----------------------------------------------------------------------------------------
    def _artifact_base(self, bucket: str, prefix: str, uri: str) -> str:
        """PREFIX itself if it holds a manifest, else the artifact its LATEST pointer names (PREFIX = .../NAME).

        A pointer rather than a listing: one small read, and listings by prefix are not signed alike everywhere
        (moto with auth rejects them)."""
        from minio.error import S3Error

        try:
            self.client.stat_object(bucket, f"{prefix}/{MANIFEST}" if prefix else MANIFEST)
            return prefix
        except S3Error as exc:
            if exc.code not in {"NoSuchKey", "NoSuchObject"}:
                raise
        try:
            latest = self.client.get_object(bucket, f"{prefix}/{LATEST}" if prefix else LATEST).read().decode().strip()
        except S3Error as exc:
            if exc.code not in {"NoSuchKey", "NoSuchObject"}:
                raise
            raise StorageError("no artifact here (neither a manifest.json nor a LATEST pointer)", where=uri,
                               hint="give s3://BUCKET/PREFIX/NAME or s3://BUCKET/PREFIX/NAME/ID as printed by upload"
                               ) from None
        if not re.fullmatch(r"[0-9a-f]{8,64}", latest):
            raise StorageError(f"the LATEST pointer holds {latest[:40]!r}, not an artifact id", where=uri)
        return f"{prefix}/{latest}" if prefix else latest

    def pull_artifact(self, uri: str, store: ArtifactStore | None = None) -> Path:
        """Download and verify an artifact into the local store (a no-op when it is already there, intact)."""
        store = store or ArtifactStore()
        bucket, prefix = parse_uri(uri)
        self.check(uri)
        base = self.call("finding the artifact", uri, lambda: self._artifact_base(bucket, prefix, uri))
        manifest_raw = self.call("reading the manifest", f"s3://{bucket}/{base}/{MANIFEST}",
                                 lambda: self.client.get_object(bucket, f"{base}/{MANIFEST}").read())
        try:
            manifest = Manifest.model_validate_json(manifest_raw)
        except Exception as exc:
            raise StorageError(f"manifest.json is unreadable: {str(exc).splitlines()[0]}",
                               where=f"s3://{bucket}/{base}") from None
        final = store.root / manifest.name / manifest.id
        if final.is_dir() and not verify(final)[1]:
            return final
        # present but damaged: set aside rather than delete what a user stored
        with store.staging(final, existing="aside") as staged:
            for rel, sha in manifest.files.items():
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise StorageError(f"the manifest names an unsafe path {rel!r}", where=f"s3://{bucket}/{base}")
                dest = staged.path / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.call(f"downloading {rel}", f"s3://{bucket}/{base}/{rel}",
                          lambda rel=rel, dest=dest: self.client.fget_object(bucket, f"{base}/{rel}", str(dest)))
                if file_sha256(dest) != sha:
                    raise StorageError(f"{rel} does not match the sha256 in its manifest",
                                       where=f"s3://{bucket}/{base}/{rel}",
                                       hint="the remote artifact is corrupt or was altered; upload it again")
            extra = set(tree_files(staged.path)) - set(manifest.files)
            if extra:
                raise StorageError(f"unexpected files {sorted(extra)}", where=f"s3://{bucket}/{base}")
            (staged.path / MANIFEST).write_bytes(manifest_raw)
        return final
