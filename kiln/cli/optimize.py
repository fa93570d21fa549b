"""`kiln optimize` and `kiln reoptimize`: build an OptimizeRequest, run the flow on embedded Prefect or a
server (PREFECT_API_URL), show progress, print the candidate table."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from kiln.artifact.outcome import OptimizeOutcome
from kiln.artifact.remote import S3Settings
from kiln.cli.app import app, candidate_table, err, fail, wide
from kiln.cli.stopping import say_stopped, supervise
from kiln.config import Settings, environ_default, settings
from kiln.errors import KilnError
from kiln.optimize.candidates import DEFAULT as DEFAULT_CANDIDATES
from kiln.optimize.defaults import MIN_GAIN
from kiln.optimize.request import parse_duration
from kiln.program import sources
from kiln.targets import parse_all


def _quiet_prefect(verbose: bool) -> None:
    """Prefect logs still go to the API (the UI); the terminal shows kiln's own progress unless --verbose."""
    import logging

    if verbose:
        return
    # the embedded server's database pool may log a cancelled rollback as it shuts down: not the user's concern
    logging.getLogger("sqlalchemy.pool").disabled = True
    for name in ["prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.server", ""]:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL + 1)


def _check_prefect_api(url: str | None) -> None:
    """With PREFECT_API_URL set, the server must answer before any work starts."""
    import httpx

    if not url:
        return
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise KilnError(f"cannot reach the Prefect server at {url} ({type(exc).__name__})",
                        hint="start it (`prefect server start`) or unset PREFECT_API_URL to run on embedded "
                             "Prefect") from None


@app.command()
def optimize(
    program: str = typer.Argument(..., help="program folder, .zip/.tar.gz of one, or a bare .onnx; or an s3:// or "
                                            "MLflow models:/, runs:/ or mlflow-artifacts:/ URI"),
    trials: int | None = typer.Option(None, min=0, help="total TVM tuning trials (0: no search) [default: 64, or "
                                                        "as many as --tune-time allows]"),
    tune_time: str | None = typer.Option(None, help="wall-clock tuning budget beside --trials, e.g. 20m or 2h "
                                                    "(whichever is spent first ends the search)"),
    max_trials_per_task: int | None = typer.Option(None, min=1, help="cap per tuning task [default: none]"),
    target: list[str] = typer.Option([], "--target", help="the CPU the artifact will run on: host, x86-64-v3, "
                                                          "znver3, c6i, aws/cpu/c5.large, cuda, ... (`kiln "
                                                          "targets`); repeatable: one artifact, a build per target, "
                                                          "each loaded where its CPU runs it [default: host]"),
    device: str | None = typer.Option(None, help="KEY@HOST:PORT: measure on the devices registered under KEY with "
                                                 "the RPC tracker at HOST:PORT (`kiln device` on the target "
                                                 "machine); the target is then the device's CPU"),
    device_timeout: float = typer.Option(60.0, min=1, help="seconds to wait for a free device under the key"),
    store: Path | None = typer.Option(None, help="artifact store folder [default: KILN_STORE or ~/.kiln/store]"),
    shape: list[str] = typer.Option([], "--shape", help="NAME=DxDxD fixes a dynamic input's shape, repeatable"),
    dim: list[str] = typer.Option([], "--dim", help="NAME=LOW..HIGH: the range of a dynamic dimension, by the "
                                                    "model's name for it or INPUT:AXIS, repeatable [default: what "
                                                    "--data shows; batch 1]"),
    candidates: str | None = typer.Option(None, help="comma-separated candidates to build [default: "
                                          f"{', '.join(DEFAULT_CANDIDATES)}]"),
    select: str | None = typer.Option(None, help="publish this candidate when it is inside every range, fastest "
                                                 "or not (its measured speed is reported)"),
    threads: int | None = typer.Option(None, min=1, help="threads per backend while measuring"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON on stdout"),
    upload: str | None = typer.Option(None, help="also upload the artifact to s3://BUCKET/PREFIX (KILN_S3_* settings)"),
    image: str | None = typer.Option(None, help="also build the model's image as REGISTRY/NAME[:TAG] and push it"),
    data: str | None = typer.Option(None, help="for a bare .onnx: samples to calibrate and evaluate on (.npz of "
                                               "arrays keyed by input name, first axis = samples; or a folder of "
                                               "NAME.npy)"),
    range_: list[str] = typer.Option([], "--range", help="for a bare .onnx: acceptable accuracy, NAME>=VALUE or "
                                                         "NAME<=VALUE, e.g. 'cosine>=0.99' (repeatable; replaces the "
                                                         "default agreement ranges)"),
    name: str | None = typer.Option(None, help="the model's name in the store [default: the program's name, or "
                                               "the file's (its folder's for model.onnx)]"),
    min_gain: float = typer.Option(MIN_GAIN, min=0.0, max=0.9, help="how much faster than onnxruntime (and the "
                                   "current version), beyond the noise, a candidate must be to ship (fraction)"),
    against_current: bool = typer.Option(True, "--against-current/--ignore-current",
                                         help="gate against the newest stored version of the same name: a re-run "
                                              "that finds nothing faster publishes nothing new"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="show Prefect's logs"),
) -> None:
    """Optimize PROGRAM and publish the fastest candidate inside every metric range that is faster than
    onnxruntime (and than the version already in the store) beyond the noise of the measurement."""
    from kiln.optimize.request import OptimizeRequest

    try:
        cfg = _prepare_prefect()
        chosen = [c.strip() for c in (candidates or "").split(",") if c.strip()] or None
        request = OptimizeRequest.of(program=program, shapes=shape or None, dims=dim or None, trials=trials,
                                     tune_time=tune_time, max_trials_per_task=max_trials_per_task,
                                     targets=target or None, device=device, device_timeout=device_timeout,
                                     candidates=chosen, select=select,
                                     threads=threads, store=str(store) if store else None, upload=upload, image=image,
                                     compare_with_current=against_current, min_gain=min_gain, name=name,
                                     ranges=range_ or None, data=_local(data))
        if not program.startswith(sources.schemes()) and not Path(program).expanduser().exists():
            raise KilnError("no such file or folder", where=program,
                            hint="give a program folder, a .zip/.tar.gz of one, or a .onnx file")
        if upload and not cfg.s3_block:  # a Prefect block is read by the flow itself
            S3Settings.from_settings(cfg)
        _check_prefect_api(cfg.prefect_api_url)
    except KilnError as exc:
        fail(exc)
    supervise(after="; nothing was published")
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from flows.optimize import optimize as optimize_flow
    from kiln import progress as bus

    _quiet_prefect(verbose)
    where = cfg.prefect_api_url or "embedded Prefect"
    bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed:.0f}/{task.total:.0f}"), TimeElapsedColumn(), console=err,
                    transient=False)
    tasks: dict[str, int] = {}
    budget = " or ".join(b for b in (f"{trials} trials" if trials is not None else "", tune_time or "") if b)
    labels = {"tune": f"tuning ({budget or f'{request.trials} trials'})",
              "evaluate": "evaluating candidates"}

    def on_progress(stage: str, done: float, total: float | None, message: str) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(labels.get(stage, stage), total=total or 1)
        bars.update(tasks[stage], completed=done, total=total or 1,
                    description=labels.get(stage, stage) + (f" ({escape(message)})" if message else ""))

    unsubscribe = bus.subscribe(on_progress)
    err.print(f"optimizing [bold]{program}[/] on {where}", highlight=False, soft_wrap=True)
    try:
        with bars, _stopped_by_signals():
            result = optimize_flow(request)
    except KilnError as exc:
        fail(exc)
    except Interrupted as exc:
        say_stopped(exc.signum, "; nothing was published")
        raise typer.Exit(128 + exc.signum) from None
    except Exception as exc:  # not the user's mistake: say so, keep the traceback for -v
        if verbose:
            raise
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))[:500]}\n"
                  "this is a kiln bug or an environment problem; rerun with -v for the traceback",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None
    finally:
        unsubscribe()
    if not result.published:
        _kept(result, as_json)
        return
    manifest = result.manifest
    if as_json:
        sys.stdout.write(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        return
    out = wide()
    for view in [manifest.view(b) for b in manifest.builds] if manifest.is_fleet else [manifest]:
        out.print(candidate_table(view))
        how = view.confirmation.describe() if view.confirmation else \
            f"{view.speedup_vs_baseline:.2f}x onnxruntime's speed, timed in interleaved rounds"
        where = f" for {view.target}" if manifest.is_fleet else ""
        out.print(f"published [bold]{view.selected}[/]{where}: {how}", highlight=False, soft_wrap=True)
    if manifest.is_fleet:
        from kiln.cli.artifacts import target_table

        out.print(target_table(manifest))
    if manifest.profile:
        out.print(f"accepts: {manifest.profile.explain()}; timed over {manifest.timing}", highlight=False,
                  soft_wrap=True)
    out.print(f"artifact: {result.artifact}", highlight=False, soft_wrap=True)
    for key, value in (("upload", result.upload), ("image", result.image)):
        if value:
            out.print(f"{key}: {value}", highlight=False, soft_wrap=True)


def _local(path: str | None) -> str | None:
    """A local path as an absolute one (the flow may run in another folder); URIs as they are."""
    if not path or path.startswith(sources.schemes()):
        return path
    return str(Path(path).expanduser().resolve())


def _kept(outcome: OptimizeOutcome, as_json: bool) -> None:
    """The version in service stayed: show this run's table and why nothing new was published."""
    if as_json:
        sys.stdout.write(outcome.model_dump_json(indent=2, exclude={"manifest"}) + "\n")
        return
    out = wide()
    if outcome.candidates:
        out.print(candidate_table(name=outcome.name, candidates=outcome.candidates, selected=outcome.selected))
    out.print(f"nothing new published: {outcome.message or 'the current version is still the fastest'}",
              highlight=False, soft_wrap=True)
    out.print(f"artifact: {outcome.artifact}", highlight=False, soft_wrap=True)


@app.command()
def reoptimize(
    extra_trials: int = typer.Option(64, min=0, help="trials to add to each model's TVM search"),
    tune_time: str | None = typer.Option(None, help="wall-clock tuning budget per model, e.g. 20m or 2h"),
    model: list[str] = typer.Option([], "--model", help="only this model (repeatable) [default: every model]"),
    store: Path | None = typer.Option(None, help="artifact store folder [default: KILN_STORE or ~/.kiln/store]"),
    min_gain: float = typer.Option(MIN_GAIN, min=0.0, max=0.9, help="how much faster a new version must be "
                                                                     "(fraction)"),
    target: list[str] = typer.Option([], "--target", help="build for these CPUs instead [default: each version's "
                                                          "own targets]"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="show Prefect's logs"),
) -> None:
    """Continue tuning stored models; publish a new version only where it is faster than the current one."""
    try:
        cfg = _prepare_prefect()
        targets = [t.name for t in parse_all(target)] if target else None
        seconds = parse_duration(tune_time) if tune_time else None
        _check_prefect_api(cfg.prefect_api_url)
    except KilnError as exc:
        fail(exc)
    supervise()
    from flows.reoptimize import reoptimize as reoptimize_flow

    _quiet_prefect(verbose)
    try:
        with err.status(f"re-optimizing ({extra_trials} more trials per model)"), _stopped_by_signals():
            outcomes = reoptimize_flow(extra_trials=extra_trials, models=model or None,
                                       store=str(store) if store else None, targets=targets, min_gain=min_gain,
                                       tune_time=seconds)
    except KilnError as exc:
        fail(exc)
    except Interrupted as exc:
        say_stopped(exc.signum)
        raise typer.Exit(128 + exc.signum) from None
    table = Table(title="re-optimization")
    table.add_column("model")
    table.add_column("outcome")
    for o in outcomes:
        table.add_row(o["model"], o["outcome"])
    wide().print(table)


class Interrupted(BaseException):
    """SIGTERM or SIGINT: unwinds the run (children killed, staging removed) instead of dying mid-write."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """While a run is under way, SIGTERM and SIGINT kill its child processes at once and end it within
    seconds; the handlers are restored afterwards. Only the first signal counts: Ctrl-C reaches this process
    twice, from the terminal and passed on by the supervising parent (kiln.cli.stopping), which also kills
    everything left if this orderly stop takes longer than its grace."""
    from kiln.optimize.isolation import terminate_children

    stopping: list[int] = []

    def stop(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        terminate_children()
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _prepare_prefect() -> Settings:
    """kiln's settings, checked, and Prefect's environment made safe for a run from the terminal."""
    cfg = settings()
    environ_default("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a loaded 2-core machine can take longer than Prefect's default 20 s to start its temporary server
    environ_default("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if cfg.prefect_home:  # Prefect creates its home without parents and fails obscurely
        cfg.prefect_home.expanduser().mkdir(parents=True, exist_ok=True)
    return cfg
