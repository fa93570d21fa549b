"""The optimize stages as Prefect tasks: each a thin wrapper (logging, progress, caching) around one plain
function of kiln.optimize, which holds the logic and can be used and tested without Prefect."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from kiln import progress
from kiln.artifact.manifest import CandidateResult, Confirmation, OptimizeOptions
from kiln.artifact.store import ArtifactStore
from kiln.fs import json_sha256
from kiln.optimize import build, compile, confirm, evaluate, gate, prepare, publish, reference, validate
from kiln.optimize.models import BuiltCandidate, CheckedProgram, Evaluation, PreparedModel, ReferenceData


@task(name="validate")
def validate_program(location: str, shapes: dict[str, list[int]] | None, candidates: list[str],
                     name: str | None = None, data: str | None = None, ranges: list[str] | None = None
                     ) -> CheckedProgram:
    return validate.validate(location, shapes, candidates, name, log=get_run_logger(), data=data, ranges=ranges)


@task(name="prepare")
def prepare_model(checked: CheckedProgram) -> PreparedModel:
    return prepare.prepare(checked, log=get_run_logger())


@task(name="reference")
def run_reference(checked: CheckedProgram, threads: int, calibrate: bool = False) -> ReferenceData:
    return reference.reference(checked, threads, calibrate, log=get_run_logger())


@task(name="build-candidates")
def build_candidates(checked: CheckedProgram, prepared: PreparedModel, ref: ReferenceData,
                     names: list[str]) -> list[BuiltCandidate]:
    """The baseline and the transform candidates; one that fails to build is reported, never fatal."""
    return build.build_candidates(checked, prepared, ref, names, log=get_run_logger())


def _compile_cache_key(context: TaskRunContext, params: dict) -> str | None:
    """A Prefect cache hit only when the on-disk build it points to is still there.

    The key names the cache folder itself (KILN_HOME included): Prefect's result storage may be shared by
    several KILN_HOMEs, and a record must never point into another one.
    """
    folder = compile.cached_build(params["prepared"], params["target"], params["trials"],
                                  params.get("max_trials_per_task"), params.get("continue_from"),
                                  params.get("tune_seconds"), params.get("name", "tvm"))
    return f"kiln-compile-{json_sha256(str(folder.resolve()))[:32]}" if folder else None


LOG_EVERY_S = 30.0  # tuning progress in the run's log (the UI) at most this often


@task(name="compile-tvm", task_run_name="compile-{name}", cache_key_fn=_compile_cache_key, persist_result=True)
def compile_tvm(checked: CheckedProgram, prepared: PreparedModel, target: str = "llvm", trials: int = 64,
                max_trials_per_task: int | None = None, continue_from: str | None = None,
                tune_seconds: float | None = None, name: str = "tvm") -> BuiltCandidate:
    """Tuning with a progress bar in the terminal (kiln.progress), a progress artifact and log lines in the UI:
    trials (failed ones counted), tasks measured, the tuner's estimate of the end-to-end latency."""
    logger = get_run_logger()
    budget = f"{trials} trials" + (f" or {tune_seconds:g} s" if tune_seconds else "")
    artifact_id = create_progress_artifact(0.0, description=f"TVM tuning, {budget}")
    logged = [0.0]

    def on_progress(p) -> None:
        fraction = max(p.trials / trials if trials else 0.0, p.elapsed / tune_seconds if tune_seconds else 0.0)
        progress.report("tune", min(p.trials, trials), trials, p.describe())
        if p.elapsed - logged[0] >= LOG_EVERY_S:
            logged[0] = p.elapsed
            logger.info("tuning: %s after %.0f s", p.describe(), p.elapsed)
        if artifact_id:
            try:
                update_progress_artifact(artifact_id, min(100.0, 100.0 * fraction))
            except Exception:
                pass  # the UI's bar must never break tuning

    built = compile.compile_tvm(checked, prepared, target, trials, max_trials_per_task, continue_from,
                                log=logger, on_progress=on_progress, tune_seconds=tune_seconds, name=name)
    progress.report("tune", trials, trials, "cached build, no tuning" if built.cached else
                    (f"{built.tuning.trials_run} trials, {built.tuning.failed_trials} failed" if built.tuning else ""))
    return built


@task(name="evaluate")
def evaluate_candidates(checked: CheckedProgram, ref: ReferenceData, built: list[BuiltCandidate], threads: int,
                        latency_repeats: int = 200) -> Evaluation:
    return evaluate.evaluate(checked, ref, built, threads, latency_repeats, log=get_run_logger(),
                             on_progress=lambda done, total, name: progress.report("evaluate", done, total, name))


@task(name="find-current-version")
def find_current(name: str, store: str | None) -> str | None:
    """The newest version of `name` in the store: the incumbent a new optimization must beat."""
    folder = ArtifactStore(store).newest(name)
    if folder:
        get_run_logger().info("%s already has a version in the store (%s): it is the one to beat", name, folder)
    return str(folder) if folder else None


@task(name="select")
def select(evaluation: Evaluation, incumbent: str | None = None, min_gain: float = gate.MIN_GAIN) -> CandidateResult:
    return gate.choose(evaluation.candidates, incumbent, min_gain)


@task(name="confirm")
def confirm_winner(checked: CheckedProgram, ref: ReferenceData, evaluation: Evaluation, winner: CandidateResult,
                   incumbent: str | None = None) -> Confirmation:
    return confirm.confirm(checked, ref, evaluation, winner, incumbent, log=get_run_logger())


@task(name="publish", retries=2, retry_delay_seconds=2)
def publish_artifact(checked: CheckedProgram, prepared: PreparedModel, evaluation: Evaluation,
                     selected: CandidateResult, target: str, store: str | None, options: OptimizeOptions,
                     confirmation: Confirmation | None = None) -> str:
    return publish.publish(checked, prepared, evaluation, selected, target, store, options, confirmation,
                           log=get_run_logger())
