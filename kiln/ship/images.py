"""The generic runtime image (built once per kiln source and wheel set) and one image per model."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from kiln.artifact.layout import MANIFEST
from kiln.artifact.manifest import ImageRecord
from kiln.artifact.store import record, verify
from kiln.config import kiln_home, settings
from kiln.errors import ArtifactError
from kiln.fs import json_sha256
from kiln.ship import context, engine
from kiln.ship.engine import Log, check_repository, connect, split_reference

RUNTIME_REPOSITORY = "kiln/runtime"


def default_base() -> str:
    return settings().base_image


def _cache() -> Path:
    return kiln_home() / "cache" / "image"


def build_runtime_image(client=None, base: str | None = None, log: Log = print) -> str:
    """The generic runtime image's tag, building it only when kiln, its wheels or the base changed."""
    from docker.errors import ImageNotFound

    from kiln import __version__

    client = client or connect()
    base = base or default_base()
    folder, digest = context.runtime_context(_cache(), log)
    tag = f"{RUNTIME_REPOSITORY}:{__version__}-{json_sha256([digest, base])[:12]}"
    try:
        client.images.get(tag)
        return tag
    except ImageNotFound:
        pass
    engine.ensure_base(client, base, log)
    log(f"building the runtime image {tag} from {base}")
    engine.build(client, tag=tag, path=str(folder), buildargs={"BASE": base, "KILN_VERSION": __version__},
                 labels={"kiln.runtime": digest, "kiln.base": base}, log=log)
    client.images.get(tag).tag(RUNTIME_REPOSITORY, "latest")
    return tag


def image_labels(manifest) -> dict[str, str]:
    """OCI's standard annotations and kiln's own: what the image holds, made by what, from where."""
    return {
        "org.opencontainers.image.title": manifest.name,
        "org.opencontainers.image.description": f"{manifest.name} served by kiln ({manifest.selected}, "
                                                f"{manifest.speedup_vs_baseline:.2f}x onnxruntime)",
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "org.opencontainers.image.version": str(manifest.version or manifest.id),
        "org.opencontainers.image.revision": context.source_revision(),
        "org.opencontainers.image.source": manifest.program.source,
        "kiln.model": manifest.name, "kiln.artifact": manifest.id, "kiln.selected": manifest.selected,
        "kiln.version": str(manifest.version or ""), "kiln.model.sha256": manifest.model.sha256,
        "kiln.requirements": " ".join(manifest.program.requirements),
    }


def build_model_image(artifact: Path, repository: str, *, push: bool = True, base: str | None = None,
                      log: Log = print) -> ImageRecord:
    """Build REPOSITORY's image of ARTIFACT, tag it (artifact id, vN, and the given tag or latest), push it
    and the generic runtime (as kiln-runtime in the same namespace), and record it in the artifact's manifest;
    returns that record (with the registry digests when pushed)."""
    check_repository(repository)
    manifest, problems = verify(artifact)
    if problems:
        raise ArtifactError(f"{len(problems)} file(s) do not match the manifest: {problems[:3]}", where=str(artifact),
                            hint="an image is only built from an intact artifact; publish it again")
    client = connect()
    runtime = build_runtime_image(client, base, log)
    repo, given_tag = split_reference(repository)
    tags = list(dict.fromkeys([manifest.id, *([f"v{manifest.version}"] if manifest.version else []),
                               given_tag or "latest"]))
    deps = None
    if manifest.program.requirements:
        deps = context.download_program_requirements(_cache(), manifest.program.requirements, log)
    log(f"building {repo}:{manifest.id} from {runtime}")
    image_id = engine.build(
        client, tag=f"{repo}:{manifest.id}", fileobj=context.model_context(artifact, [*manifest.files, MANIFEST], deps),
        buildargs={"RUNTIME": runtime}, labels=image_labels(manifest), log=log)
    image = client.images.get(image_id)
    for tag in tags[1:]:
        image.tag(repo, tag)
    entry = ImageRecord(repository=repo, tags=tags, image_id=image_id, runtime=runtime,
                        built_at=datetime.now(UTC).isoformat())
    if push:
        digests = {tag: engine.push(client, repo, tag, log) for tag in tags}
        entry.digest = digests[manifest.id]
        entry.reference = f"{repo}@{entry.digest}"
        log(f"pushed {entry.reference}")
        # the generic runtime goes beside it, for running other artifacts mounted at /models/current
        runtime_repo = f"{repo.rsplit('/', 1)[0]}/kiln-runtime" if "/" in repo else "kiln-runtime"
        runtime_tag = runtime.rsplit(":", 1)[1]
        client.images.get(runtime).tag(runtime_repo, runtime_tag)
        entry.runtime_reference = f"{runtime_repo}@{engine.push(client, runtime_repo, runtime_tag, log)}"
        log(f"pushed {entry.runtime_reference}")
    record(artifact, "images", entry)
    return entry
