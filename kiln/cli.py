"""`kiln` command line: a thin layer over the flows and the SDK (like mlc-llm's CLI over its interface)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.errors import GateError, KilnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kiln: optimize an ONNX model ahead of time, gated by your metrics.")


def _console() -> Console:
    # a private copy of stderr: tuning redirects fds 1/2 to a log file, the progress bar must stay visible
    return Console(file=os.fdopen(os.dup(2), "w", buffering=1), stderr=True)


err = _console()


def _quiet_prefect(verbose: bool) -> None:
    """Prefect logs still go to the API (the UI); the terminal shows kiln's own progress unless --verbose."""
    import logging

    if verbose:
        return
    for name in ["prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.server", ""]:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL + 1)


def _fail(exc: KilnError) -> None:
    if isinstance(exc, GateError) and exc.table:
        err.print(exc.table, markup=False, highlight=False, soft_wrap=True)
    err.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _check_prefect_api() -> None:
    """With PREFECT_API_URL set, the server must answer before any work starts."""
    import httpx

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise KilnError(f"cannot reach the Prefect server at {url} ({type(exc).__name__})",
                        hint="start it (`prefect server start`) or unset PREFECT_API_URL to run on embedded "
                             "Prefect") from None


def candidate_table(manifest) -> Table:
    from kiln import report

    rows = report.rows(manifest.candidates, manifest.selected)
    table = Table(title=f"{manifest.name}: candidates (* = published)",
                  caption="ranges: " + "; ".join(report.ranges(manifest.candidates)))
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "backend"]  # the name says it
    for c in cols:
        table.add_column(c, overflow="fold", no_wrap=c != "why not",
                         max_width=48 if c == "why not" else None)
    for r in rows:
        table.add_row(*(r.get(c, "") for c in cols), style="bold green" if r["candidate"].endswith("*") else None)
    return table


@app.command()
def optimize(
    program: str = typer.Argument(..., help="program folder, .zip/.tar.gz of one, or a bare .onnx"),
    trials: int = typer.Option(64, min=0, help="total TVM tuning trials (0: no search)"),
    max_trials_per_task: int | None = typer.Option(None, min=1, help="cap per tuning task"),
    target: str = typer.Option("llvm", help="llvm (this CPU) or cuda"),
    store: Path | None = typer.Option(None, help="artifact store folder [default: KILN_STORE or ~/.kiln/store]"),
    shape: list[str] = typer.Option([], "--shape", help="NAME=DxDxD for a dynamic input, repeatable"),
    candidates: str | None = typer.Option(None, help="comma-separated candidates to build [default: onnxruntime, "
                                          "tvm, ort-fp32-basic, ort-int8-dynamic, ort-int8-static]"),
    threads: int | None = typer.Option(None, min=1, help="threads per backend while measuring"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON on stdout"),
    upload: str | None = typer.Option(None, help="also upload the artifact to s3://BUCKET/PREFIX (KILN_S3_* settings)"),
    image: str | None = typer.Option(None, help="also build the model's image as REGISTRY/NAME[:TAG] and push it"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="show Prefect's logs"),
) -> None:
    """Optimize PROGRAM and publish the fastest candidate inside every metric range."""
    from kiln.loader import parse_shapes

    _prepare_prefect()
    try:
        shapes = parse_shapes(shape)
        if target not in ("llvm", "cuda"):
            raise KilnError(f"unknown target {target!r}", hint="use --target llvm or --target cuda")
        chosen = [c.strip() for c in (candidates or "").split(",") if c.strip()] or None
        from kiln import candidates as registry

        known = registry.all_names()
        unknown = sorted(set(chosen or []) - set(known))
        if unknown:
            raise KilnError(f"unknown candidates {unknown}", hint=f"choose from {', '.join(known)}")
        if not program.startswith(("s3://", "file://")) and not Path(program).expanduser().exists():
            raise KilnError("no such file or folder", where=program,
                            hint="give a program folder, a .zip/.tar.gz of one, or a .onnx file")
        _check_destinations(upload, image)
        _check_prefect_api()
    except KilnError as exc:
        _fail(exc)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from flows.optimize import optimize as optimize_flow
    from kiln import progress as bus
    from kiln.manifest import Manifest

    _quiet_prefect(verbose)
    where = os.environ.get("PREFECT_API_URL") or "embedded Prefect"
    bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed:.0f}/{task.total:.0f}"), TimeElapsedColumn(), console=err,
                    transient=False)
    tasks: dict[str, int] = {}
    labels = {"tune": f"tuning ({trials} trials)", "evaluate": "evaluating candidates"}

    def on_progress(stage: str, done: float, total: float | None, message: str) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(labels.get(stage, stage), total=total or 1)
        bars.update(tasks[stage], completed=done, total=total or 1,
                    description=labels.get(stage, stage) + (f" ({escape(message)})" if message else ""))

    unsubscribe = bus.subscribe(on_progress)
    err.print(f"optimizing [bold]{program}[/] on {where}", highlight=False, soft_wrap=True)
    try:
        with bars:
            result = optimize_flow(program=program, shapes=shapes or None, trials=trials,
                                   max_trials_per_task=max_trials_per_task, target=target, candidates=chosen,
                                   threads=threads, store=str(store) if store else None, upload=upload, image=image)
    except KilnError as exc:
        _fail(exc)
    except Exception as exc:  # not the user's mistake: say so, keep the traceback for -v
        if verbose:
            raise
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))[:500]}\n"
                  "this is a kiln bug or an environment problem; rerun with -v for the traceback",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None
    finally:
        unsubscribe()
    manifest = Manifest.read(Path(result["artifact"]))
    if as_json:
        sys.stdout.write(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        return
    out = Console(width=max(Console().width, 120))
    out.print(candidate_table(manifest))
    out.print(f"published [bold]{manifest.selected}[/] ({manifest.speedup_vs_baseline:.2f}x vs onnxruntime p50)")
    out.print(f"artifact: {result['artifact']}", highlight=False, soft_wrap=True)
    for key in ("upload", "image"):
        if result.get(key):
            out.print(f"{key}: {result[key]}", highlight=False, soft_wrap=True)


@app.command()
def reoptimize(
    extra_trials: int = typer.Option(64, min=0, help="trials to add to each model's TVM search"),
    model: list[str] = typer.Option([], "--model", help="only this model (repeatable) [default: every model]"),
    store: Path | None = typer.Option(None, help="artifact store folder [default: KILN_STORE or ~/.kiln/store]"),
    min_gain: float = typer.Option(0.02, min=0.0, max=0.9, help="how much faster a new version must be (fraction)"),
    target: str = typer.Option("llvm", help="llvm (this CPU) or cuda"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="show Prefect's logs"),
) -> None:
    """Continue tuning stored models; publish a new version only where it is faster than the current one."""
    _prepare_prefect()
    try:
        if target not in ("llvm", "cuda"):
            raise KilnError(f"unknown target {target!r}", hint="use --target llvm or --target cuda")
        _check_prefect_api()
    except KilnError as exc:
        _fail(exc)
    from flows.reoptimize import reoptimize as reoptimize_flow

    _quiet_prefect(verbose)
    try:
        with err.status(f"re-optimizing ({extra_trials} more trials per model)"):
            outcomes = reoptimize_flow(extra_trials=extra_trials, models=model or None,
                                       store=str(store) if store else None, target=target, min_gain=min_gain)
    except KilnError as exc:
        _fail(exc)
    table = Table(title="re-optimization")
    table.add_column("model")
    table.add_column("outcome")
    for o in outcomes:
        table.add_row(o["model"], o["outcome"])
    Console(width=max(Console().width, 120)).print(table)


def _prepare_prefect() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a loaded 2-core machine can take longer than Prefect's default 20 s to start its temporary server
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if os.environ.get("PREFECT_HOME"):  # Prefect creates its home without parents and fails obscurely
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


def _check_destinations(upload: str | None, image: str | None) -> None:
    """Syntax and settings only (cheap); the flow checks reachability itself before it tunes."""
    if upload:
        from kiln.objectstore import S3Settings, parse_uri

        parse_uri(upload)
        if not os.environ.get("KILN_S3_BLOCK"):  # a Prefect block is read by the flow itself
            S3Settings.from_env()
    if image:
        from kiln.image import check_repository

        check_repository(image)


@app.command()
def inspect(
    artifact: str = typer.Argument(..., help="artifact folder, or NAME[/ID] in the store"),
    store: Path | None = typer.Option(None, help="artifact store folder"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Print an artifact's manifest and verify every file's sha256 (exit 1 on a mismatch)."""
    from kiln.store import ArtifactStore, resolve, verify

    try:
        folder = resolve(artifact, ArtifactStore(store))
        manifest, problems = verify(folder)
    except KilnError as exc:
        _fail(exc)
    out = Console(width=max(Console().width, 120))
    if as_json:
        sys.stdout.write(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    else:
        info = Table(show_header=False, title=f"artifact {folder}")
        for k, v in [("name", manifest.name), ("id", manifest.id), ("created", manifest.created_at),
                     ("selected", f"{manifest.selected} ({manifest.backend})"),
                     ("speed-up vs onnxruntime", f"{manifest.speedup_vs_baseline:.2f}x"),
                     ("model", f"{manifest.model.path} sha256 {manifest.model.sha256[:16]}..."),
                     ("target", manifest.target), ("dataset", manifest.dataset),
                     ("inputs", ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in manifest.inputs)),
                     ("outputs", ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in manifest.outputs)),
                     ("guards", ", ".join(f"{g.input} in [{g.low}, {g.high})" for g in manifest.guards) or "-"),
                     ("tuning", json.dumps(manifest.tuning) if manifest.tuning else "-"),
                     ("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items()))]:
            info.add_row(k, str(v))
        out.print(info)
        out.print(candidate_table(manifest))
    if problems:
        for p in problems:
            err.print(f"[red]hash mismatch:[/] {p}", highlight=False, soft_wrap=True)
        err.print(f"[bold red]error:[/] {len(problems)} file(s) do not match the manifest")
        raise typer.Exit(1)
    err.print(f"[green]verified[/] {len(manifest.files)} files against their sha256")


@app.command()
def serve(
    artifact: str = typer.Argument(..., help="artifact folder, or NAME[/ID] in the store"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8001, min=0, max=65535, help="port (0: any free port)"),
    workers: int = typer.Option(1, min=1, help="model instances that run requests in parallel"),
    max_message_mb: float = typer.Option(16.0, min=0.001, help="largest request/response in MiB"),
    threads: int | None = typer.Option(None, min=1, help="threads per model instance [default: cores / workers]"),
    log_requests: bool = typer.Option(True, help="one JSON line per request on stderr"),
) -> None:
    """Serve an artifact over gRPC: the program's protocol, the v2 tensor protocol, health, reflection.

    ARTIFACT may be s3://BUCKET/PREFIX/NAME[/ID]: it is pulled into the local store and verified first."""
    from kiln.serving.server import serve as run_server

    try:
        if artifact.startswith("s3://"):
            artifact = str(_pull(artifact, None))
        run_server(artifact, host=host, port=port, workers=workers, max_message_mb=max_message_mb, threads=threads,
                   log_requests=log_requests)
    except KilnError as exc:
        _fail(exc)


@app.command()
def client(
    artifact: str = typer.Argument(..., help="artifact folder (for its protocol), or NAME[/ID] in the store"),
    address: str = typer.Option("127.0.0.1:8001", help="HOST:PORT of a kiln server"),
    request: Path = typer.Option(..., exists=True, dir_okay=False, help="the request message as JSON"),
) -> None:
    """Send REQUEST (the program's request message in protobuf's JSON mapping) and print the response."""
    import grpc
    from google.protobuf import json_format

    from kiln.client import connect

    try:
        with connect(address, artifact=artifact, ready_timeout=10) as c:
            text = request.read_text()
            if c.Request is None:  # generic tensor protocol: {"inputs": {name: nested lists}}
                import numpy as np

                spec = {s.name: s.dtype for s in _manifest_of(artifact).inputs}
                feed = {k: np.asarray(v, dtype=spec.get(k)) for k, v in json.loads(text)["inputs"].items()}
                print(json.dumps({"outputs": {k: v.tolist() for k, v in c.infer(feed).items()}}))
                return
            try:
                message = json_format.Parse(text, c.Request())
            except json_format.ParseError as exc:
                raise KilnError(f"not a valid {c.Request.DESCRIPTOR.full_name}: {exc}", where=str(request)) from None
            print(json_format.MessageToJson(c.predict(message), preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True))
    except KilnError as exc:
        _fail(exc)
    except grpc.FutureTimeoutError:
        _fail(KilnError(f"no kiln server answers at {address}", hint="start one with `kiln serve ARTIFACT`"))
    except grpc.RpcError as exc:
        err.print(f"[bold red]error:[/] {exc.code().name}: {escape(exc.details() or '')}", soft_wrap=True)
        raise typer.Exit(1) from None


def _manifest_of(artifact: str):
    from kiln.manifest import Manifest
    from kiln.store import resolve

    return Manifest.read(resolve(artifact))


def _warn(message: str) -> None:
    err.print(f"[yellow]{escape(message)}[/]", highlight=False, soft_wrap=True)


def _pull(uri: str, store: Path | None) -> Path:
    from kiln.objectstore import ObjectStore
    from kiln.store import ArtifactStore

    err.print(f"pulling {uri}", highlight=False, soft_wrap=True)
    folder = ObjectStore(on_retry=_warn).pull_artifact(uri, ArtifactStore(store))
    err.print(f"[green]verified[/] {folder}", highlight=False, soft_wrap=True)
    return folder


@app.command()
def pull(
    uri: str = typer.Argument(..., help="s3://BUCKET/PREFIX/NAME (newest) or s3://BUCKET/PREFIX/NAME/ID"),
    store: Path | None = typer.Option(None, help="artifact store folder [default: KILN_STORE or ~/.kiln/store]"),
) -> None:
    """Download an artifact from S3/MinIO into the local store, verifying every file's sha256."""
    try:
        print(_pull(uri, store))
    except KilnError as exc:
        _fail(exc)


@app.command()
def upload(
    artifact: str = typer.Argument(..., help="artifact folder, or NAME[/ID] in the store"),
    uri: str = typer.Argument(..., help="s3://BUCKET/PREFIX; the artifact goes to PREFIX/NAME/ID/"),
) -> None:
    """Upload an artifact to S3/MinIO (KILN_S3_* settings) and verify every object."""
    from kiln.objectstore import ObjectStore
    from kiln.store import resolve

    try:
        print(ObjectStore(on_retry=_warn).upload_artifact(resolve(artifact), uri))
    except KilnError as exc:
        _fail(exc)


@app.command()
def image(
    artifact: str = typer.Argument(..., help="artifact folder, or NAME[/ID] in the store"),
    repository: str = typer.Argument(..., help="REGISTRY/NAME[:TAG], e.g. 127.0.0.1:5000/digits"),
    push: bool = typer.Option(True, help="push to the registry (and record the digest)"),
    base: str | None = typer.Option(None, help="base image [default: KILN_BASE_IMAGE or ubuntu:24.04]"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="show the build's output"),
) -> None:
    """Build the model's runtime image from an artifact, push it, record its digest in the manifest."""
    from kiln.image import build_model_image
    from kiln.store import resolve

    try:
        with err.status("building") as status:
            def log(message: str) -> None:
                if verbose:
                    err.print(escape(message), highlight=False, soft_wrap=True)
                elif message.startswith(("Step ", "building", "pushed", "pulling", "downloading", "retry")):
                    status.update(escape(message[:100]))

            entry = build_model_image(resolve(artifact), repository, push=push, base=base, log=log)
    except KilnError as exc:
        _fail(exc)
    print(entry.get("reference") or f"{entry['repository']}:{entry['tags'][0]}")


@app.command("list")
def list_artifacts(store: Path | None = typer.Option(None, help="artifact store folder")) -> None:
    """List the artifacts in the store, newest first."""
    from kiln.manifest import Manifest
    from kiln.store import ArtifactStore

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
    Console(width=max(Console().width, 120)).print(table)


@app.command()
def up() -> None:
    """Start kiln as a service: Prefect server, work pool and deployments, a worker, the web app (127.0.0.1)."""
    from kiln import service

    try:
        urls = service.up(log=lambda m: err.print(m, highlight=False))
    except KilnError as exc:
        _fail(exc)
    print(f"Prefect UI:  {urls['ui']}\nweb form:    {urls['web']}  (token: {urls['token']})\n"
          f"webhooks:    {urls['web']}/webhooks/mlflow  {urls['web']}/webhooks/huggingface\n"
          "stop with `kiln down` (`make down`)")


@app.command()
def down() -> None:
    """Stop exactly what `kiln up` started."""
    from kiln import service

    stopped = service.down(log=lambda m: err.print(m, highlight=False))
    if not stopped:
        err.print("nothing kiln started is running")


@app.command()
def version() -> None:
    """Print the versions of kiln and the toolchain."""
    from kiln.manifest import versions

    for k, v in versions().items():
        print(f"{k} {v}")


def main() -> None:
    try:
        app()
    except KilnError as exc:  # anything that slipped past a command's own handler
        err.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
