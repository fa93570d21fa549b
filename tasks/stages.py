"""The optimize stages as Prefect tasks: each a thin wrapper (logging, progress, caching) around one plain
function of kiln.optimize, which holds the logic and can be used and tested without Prefect. After `plan`,
every stage takes the Plan: the decisions of the run are made once, there."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from kiln import progress
from kiln.artifact.manifest import Manifest
from kiln.fs import json_sha256
from kiln.optimize import build, compile, confirm, evaluate, prepare, publish, reference, validate
from kiln.optimize import plan as planning
from kiln.optimize.confirm import Choice
from kiln.optimize.models import BuiltCandidate, CheckedProgram, Evaluation, PreparedModel, ReferenceData
from kiln.optimize.plan import Plan
from kiln.optimize.request import OptimizeRequest


@task(name="validate")
def validate_program(request: OptimizeRequest) -> CheckedProgram:
    r = request
    return validate.validate(r.program, r.shapes, r.chosen, r.name, log=get_run_logger(), data=r.data,
                             ranges=r.ranges, dims=r.dims, default_dims=r.default_dims)


@task(name="plan")
def make_plans(request: OptimizeRequest, checked: CheckedProgram) -> list[Plan]:
    """One Plan per target (one, unless the run builds for a fleet)."""
    return planning.plans(request, checked, log=get_run_logger())


@task(name="prepare")
def prepare_model(checked: CheckedProgram) -> PreparedModel:
    return prepare.prepare(checked, log=get_run_logger())


@task(name="reference")
def run_reference(checked: CheckedProgram, plan: Plan) -> ReferenceData:
    return reference.reference(checked, plan.threads, plan.calibrate, log=get_run_logger())


@task(name="build-candidates")
def build_candidates(checked: CheckedProgram, prepared: PreparedModel, ref: ReferenceData,
                     plan: Plan) -> list[BuiltCandidate]:
    """The baseline and the transform candidates (and the incumbent); one that fails to build is reported."""
    return build.build_candidates(checked, prepared, ref, plan.transforms, log=get_run_logger(),
                                  incumbent=plan.incumbent, target=plan.target)


@task(name="compile-job", task_run_name="compile-job-{name}")
def compile_job(checked: CheckedProgram, prepared: PreparedModel, plan: Plan, name: str = "tvm",
                source: BuiltCandidate | None = None) -> compile.CompileJob:
    """What the candidate compiles and its cache key, settled (the int8 model written, the database seeded)
    before compile-tvm's cache key is asked for."""
    return compile.job(checked, prepared, plan, name, source)


def _compile_cache_key(context: TaskRunContext, params: dict) -> str | None:
    """A Prefect cache hit only when the on-disk build it points to was there when the job was settled; the key
    only hashes the job's cache folder (compile.compile_key, KILN_HOME included: Prefect's result storage may be
    shared by several KILN_HOMEs, and a record must never point into another one)."""
    job = params["job"]
    return f"kiln-compile-{json_sha256(job.folder)[:32]}" if job.built and job.folder else None


LOG_EVERY_S = 30.0  # tuning progress in the run's log (the UI) at most this often


@task(name="compile-tvm", task_run_name="compile-{job.name}", cache_key_fn=_compile_cache_key,
      persist_result=True)
def compile_tvm(checked: CheckedProgram, job: compile.CompileJob, plan: Plan) -> BuiltCandidate:
    """Tuning with a progress bar in the terminal (kiln.progress), a progress artifact and log lines in the UI:
    trials (failed ones counted), tasks measured, the tuner's estimate of the end-to-end latency."""
    logger = get_run_logger()
    trials, tune_seconds = plan.request.trials, compile.time_share(plan, job.name)
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

    built = compile.compile_tvm(checked, job, plan, log=logger, on_progress=on_progress)
    progress.report("tune", trials, trials, "cached build, no tuning" if built.cached else
                    (f"{built.tuning.trials_run} trials, {built.tuning.failed_trials} failed" if built.tuning else ""))
    return built


@task(name="evaluate")
def evaluate_candidates(checked: CheckedProgram, ref: ReferenceData, built: list[BuiltCandidate],
                        plan: Plan) -> Evaluation:
    return evaluate.evaluate(checked, ref, built, plan.threads, plan.request.latency_repeats, log=get_run_logger(),
                             on_progress=lambda done, total, name: progress.report("evaluate", done, total, name),
                             device=plan.device)


@task(name="choose")
def choose_winner(checked: CheckedProgram, ref: ReferenceData, evaluation: Evaluation, plan: Plan) -> Choice:
    """The gate, then the winner timed again and judged on held-out samples (kiln.optimize.confirm)."""
    return confirm.choose(checked, ref, evaluation, plan, log=get_run_logger())


@task(name="publish", retries=2, retry_delay_seconds=2)
def publish_artifact(checked: CheckedProgram, prepared: PreparedModel, runs: list[publish.TargetRun]) -> Manifest:
    return publish.publish(checked, prepared, runs, log=get_run_logger())
