"""The Docker engine and registry, through the docker SDK: build, tag, push, digest.

The engine is found the usual way (DOCKER_HOST, else the default socket). Builds use the host's network, so
they work on engines started without a bridge (`dockerd --bridge=none`, as in CI); only apt reaches out
from inside a build. Pushes are retried on transient failures (connection refused, 5xx), never on a refusal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kiln.config import settings
from kiln.errors import ImageError
from kiln.retry import with_retries

Log = Callable[[str], None]
_TRANSIENT = re.compile(r"connection refused|timeout|timed out|EOF|reset by peer|50[0-4]|"
                        r"no such host|temporarily|TLS handshake|i/o", re.I)


def connect(timeout: int = 900):
    """A docker client that has answered a ping, or a clear ImageError."""
    import docker
    from docker.errors import DockerException

    where = settings().docker_host
    try:
        client = docker.from_env(timeout=timeout)  # DOCKER_HOST and docker's TLS variables, as docker reads them
        client.ping()
    except DockerException as exc:
        raise ImageError(f"no Docker engine is reachable at {where} ({str(exc).splitlines()[0][:160]})",
                         hint="start dockerd, or point DOCKER_HOST at a running engine", transient=True) from None
    return client


def split_reference(ref: str) -> tuple[str, str | None]:
    """REGISTRY/NAME[:TAG] -> (REGISTRY/NAME, TAG); a port in the registry is not a tag."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return ref, None
    return name, tag


def check_repository(ref: str) -> str:
    repo, tag = split_reference(ref)
    if not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*", repo) or (
            tag is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag)):
        raise ImageError(f"{ref!r} is not a valid image reference",
                         hint="write REGISTRY/NAME or REGISTRY/NAME:TAG in lowercase, e.g. 127.0.0.1:5000/digits")
    return ref


def ensure_base(client, base: str, log: Log) -> None:
    """The base image must be local or pullable; say how to make one when it is neither (no Docker Hub here)."""
    from docker.errors import DockerException, ImageNotFound

    try:
        client.images.get(base)
        return
    except ImageNotFound:
        pass
    log(f"pulling base image {base}")
    try:
        repo, tag = split_reference(base)
        client.images.pull(repo, tag=tag or "latest")
    except DockerException as exc:
        raise ImageError(f"base image {base} is neither local nor pullable ({str(exc).splitlines()[0][:160]})",
                         hint="run `make base-image` (debootstrap) and set KILN_BASE_IMAGE=kiln/ubuntu:24.04, "
                              "or set KILN_BASE_IMAGE to an image your engine has") from None


def build(client, *, tag: str, log: Log, path: str | None = None, fileobj: Any = None,
          buildargs: dict[str, str] | None = None, labels: dict[str, str] | None = None, nocache: bool = False
          ) -> str:
    """Build and tag; streams the build's output to `log`; returns the image id."""
    from docker.errors import APIError

    kwargs = dict(tag=tag, rm=True, forcerm=True, decode=True, buildargs=buildargs or {}, labels=labels or {},
                  network_mode="host", nocache=nocache)
    if fileobj is not None:
        kwargs.update(fileobj=fileobj, custom_context=True)
    else:
        kwargs.update(path=path)
    image_id = None
    try:
        for chunk in client.api.build(**kwargs):
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageError(f"building {tag} failed: {detail.strip()[-600:]}",
                                 transient=bool(_TRANSIENT.search(detail)))
            if chunk.get("stream", "").strip():
                log(chunk["stream"].rstrip())
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except APIError as exc:
        raise ImageError(f"the Docker engine refused to build {tag}: {exc.explanation or exc}",
                         transient=exc.is_server_error()) from None
    return image_id or client.images.get(tag).id


def push(client, repository: str, tag: str, log: Log, attempts: int = 3) -> str:
    """Push REPOSITORY:TAG; returns the registry's manifest digest (sha256:...)."""
    from docker.errors import APIError

    def once() -> str:
        digest = None
        for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageError(f"pushing {repository}:{tag} failed: {detail}", where=repository,
                                 hint="is the registry running and reachable from the Docker engine?",
                                 transient=bool(_TRANSIENT.search(detail)))
            digest = (chunk.get("aux") or {}).get("Digest") or digest
        if not digest:
            raise ImageError(f"the registry gave no digest for {repository}:{tag}", transient=True)
        return digest

    def explain(exc: Exception) -> ImageError:
        return ImageError(f"pushing {repository}:{tag} failed: {str(exc)[:300]}", where=repository,
                          transient=not isinstance(exc, APIError) or exc.is_server_error())

    return with_retries(once, explain, attempts=attempts, delay=1.0, on_retry=log)
