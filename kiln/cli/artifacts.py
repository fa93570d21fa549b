"""Commands on artifacts: inspect, list, pull, upload, image, version."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from kiln.artifact.manifest import Manifest, versions
from kiln.artifact.remote import ObjectStore
from kiln.artifact.store import ArtifactStore, resolve, verify
from kiln.cli.app import app, candidate_table, err, fail, warn, wide
from kiln.errors import KilnError


@app.command()
def inspect(
    artifact: str = typer.Argument(..., help="artifact folder, or NAME[/ID] in the store"),
    store: Path | None = typer.Option(None, help="artifact store folder"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Print an artifact's manifest and verify every file's sha256 (exit 1 on a mismatch)."""
    try:
        folder = resolve(artifact, ArtifactStore(store))
        manifest, problems = verify(folder)
    except KilnError as exc:
        fail(exc)
    out = wide()
    if as_json:
        sys.stdout.write(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    else:
        info = Table(show_header=False, title=f"artifact {folder}")
        for k, v in [("name", manifest.name), ("id", manifest.id), ("created", manifest.created_at),
                     ("selected", f"{manifest.selected} ({manifest.backend})"),
                     ("speed-up vs onnxruntime", manifest.confirmation.describe() if manifest.confirmation
                      else f"{manifest.speedup_vs_baseline:.2f}x"),
                     ("model", f"{manifest.model.path} sha256 {manifest.model.sha256[:16]}..."),
                     ("target", manifest.target), ("dataset", manifest.dataset),
                     ("inputs", ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in manifest.inputs)),
                     ("profile", manifest.profile.explain() + _buckets(manifest.settings)),
                     ("timed over", manifest.timing or "-"),
                     ("outputs", ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in manifest.outputs)),
                     ("guards", ", ".join(f"{g.input} in [{g.low}, {g.high})" for g in manifest.guards) or "-"),
                     ("tuning", manifest.tuning.model_dump_json() if manifest.tuning else "-"),
                     ("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items()))]:
            info.add_row(k, str(v))
        out.print(info)
        if manifest.builds:
            out.print(target_table(manifest))
        out.print(candidate_table(manifest))
    if problems:
        for p in problems:
            err.print(f"[red]hash mismatch:[/] {p}", highlight=False, soft_wrap=True)
        err.print(f"[bold red]error:[/] {len(problems)} file(s) do not match the manifest")
        raise typer.Exit(1)
    err.print(f"[green]verified[/] {len(manifest.files)} files against their sha256")


def target_table(manifest) -> Table:
    """One row per target: its build, its speed-up, what its code requires of the CPU, where it was judged, whether
    it runs here (and which build this CPU would load)."""
    from kiln.errors import KilnError
    from kiln.runtime.cpu_flags import for_this_cpu, missing, this_cpu

    here = this_cpu().flags
    try:
        loads = for_this_cpu(manifest).builds[0].target.name if manifest.is_fleet else None
    except KilnError:
        loads = None
    table = Table(title="targets")
    for col in ("target", "LLVM CPU", "selected", "speed-up", "requires", "judged", "runs here"):
        table.add_column(col, overflow="fold")
    for b in manifest.builds:
        absent = missing(b.requires, here)
        gain = b.speedup_vs_baseline if b.speedup_vs_baseline is not None else manifest.speedup_vs_baseline
        table.add_row(b.target.name, b.target.mcpu or "-", f"{b.selected} ({b.backend})", f"{gain:.2f}x",
                      ", ".join(b.requires) or "- (onnxruntime picks its kernels when it loads)", b.judged,
                      f"no: lacks {', '.join(absent)}" if absent else
                      "yes: loaded here" if b.target.name == loads else "yes")
    return table


def pull_to_store(uri: str, store: Path | None) -> Path:
    err.print(f"pulling {uri}", highlight=False, soft_wrap=True)
    folder = ObjectStore(on_retry=warn).pull_artifact(uri, ArtifactStore(store))
    err.print(f"[green]verified[/] {folder}", highlight=False, soft_wrap=True)
    return folder


@app.command()
def pull(
    uri: str = typer.Argument(..., help="s3://BUCKET/PREFIX/NAME (newest) or s3://BUCKET/PREFIX/NAME/ID"),
    store: Path | None = typer.Option(None, help="artifact store folder [default: KILN_STORE or ~/.kiln/store]"),
) -> None:
    """Download an artifact from S3/MinIO into the local store, verifying every file's sha256."""
    try:
        print(pull_to_store(uri, store))
    except KilnError as exc:
        fail(exc)


@app.command()
def upload(
    artifact: str = typer.Argument(..., help="artifact folder, or NAME[/ID] in the store"),
    uri: str = typer.Argument(..., help="s3://BUCKET/PREFIX; the artifact goes to PREFIX/NAME/ID/"),
) -> None:
    """Upload an artifact to S3/MinIO (KILN_S3_* settings) and verify every object."""
    try:
        print(ObjectStore(on_retry=warn).upload_artifact(resolve(artifact), uri))
    except KilnError as exc:
        fail(exc)


@app.command()
def image(
    artifact: str = typer.Argument(..., help="artifact folder, or NAME[/ID] in the store"),
    repository: str = typer.Argument(..., help="REGISTRY/NAME[:TAG], e.g. 127.0.0.1:5000/digits"),
    push: bool = typer.Option(True, help="push to the registry (and record the digest)"),
    base: str | None = typer.Option(None, help="base image [default: KILN_BASE_IMAGE or ubuntu:24.04]"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="show the build's output"),
) -> None:
    """Build the model's runtime image from an artifact, push it, record its digest in the manifest."""
    from kiln.ship import build_model_image

    try:
        with err.status("building") as status:
            def log(message: str) -> None:
                if verbose:
                    err.print(escape(message), highlight=False, soft_wrap=True)
                elif message.startswith(("Step ", "building", "pushed", "pulling", "downloading", "retry")):
                    status.update(escape(message[:100]))

            entry = build_model_image(resolve(artifact), repository, push=push, base=base, log=log)
    except KilnError as exc:
        fail(exc)
    print(entry.reference or f"{entry.repository}:{entry.tags[0]}")


@app.command("list")
def list_artifacts(store: Path | None = typer.Option(None, help="artifact store folder")) -> None:
    """List the artifacts in the store, newest first."""
    st = ArtifactStore(store)
    table = Table(title=f"artifacts in {st.root}")
    for col in ("name", "version", "id", "created", "selected", "speed-up", "p50 ms"):
        table.add_column(col)
    manifests = []
    for folder in st.artifacts():
        try:
            manifests.append(Manifest.read(folder))
        except KilnError as exc:
            err.print(f"[yellow]skipped:[/] {exc.render()}", highlight=False, soft_wrap=True)
    for m in sorted(manifests, key=lambda m: m.created_at, reverse=True):
        p50 = "-" if m.selected_p50() is None else f"{m.selected_p50():.4g}"
        table.add_row(m.name, f"v{m.version}" if m.version else "-", m.id, m.created_at[:19], m.selected,
                      f"{m.speedup_vs_baseline:.2f}x", p50)
    wide().print(table)


@app.command()
def version() -> None:
    """Print the versions of kiln and the toolchain."""
    for k, v in versions().items():
        print(f"{k} {v}")


def _buckets(settings) -> str:
    """`; TVM buckets of width: 32, 64, 97` or `; TVM buckets of height x width: 32x64, 48x320`."""
    names, buckets = settings.bucket_grid()
    return f"; TVM buckets of {' x '.join(names)}: {', '.join('x'.join(map(str, b)) for b in buckets)}" \
        if buckets else ""
