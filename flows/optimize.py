"""The `optimize` flow: validate -> plan -> prepare -> reference -> build/compile -> evaluate -> choose -> publish
-> report, then, for a run a registry started, its outcome tagged on that model version (whether the run
succeeded or not).

It only orchestrates: every decision is in the Plan (kiln.optimize.plan) or a stage, every stage is a task in
tasks/ around a plain function of kiln.optimize. Runs embedded (no PREFECT_API_URL) or on a server.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from kiln import progress
from kiln.artifact.outcome import OptimizeOutcome
from kiln.artifact.store import ArtifactStore
from kiln.errors import GateError, KilnError
from kiln.optimize.compile import int8_source
from kiln.optimize.models import CheckedProgram, PreparedModel, ReferenceData
from kiln.optimize.plan import Plan
from kiln.optimize.publish import TargetRun
from kiln.optimize.request import OptimizeRequest, RegistryVersion
from kiln.registries import outcome_tags
from tasks.image import check_image
from tasks.image import image as build_image
from tasks.registry import tag_model_version
from tasks.report import report_candidates, report_result
from tasks.stages import (
    build_candidates,
    choose_winner,
    compile_job,
    compile_tvm,
    evaluate_candidates,
    make_plans,
    prepare_model,
    publish_artifact,
    run_reference,
    validate_program,
)
from tasks.upload import check_upload
from tasks.upload import upload as upload_artifact


@flow(name="optimize", log_prints=True)
def optimize(request: OptimizeRequest) -> OptimizeOutcome:
    """Optimize a model program and publish the fastest candidate that stays inside every metric range.

    Args:
        request: what to optimize and how (program, shapes, trial budget, target, candidates, destinations).
    """
    if request.report_to is None:
        return _optimize(request)
    from prefect.runtime import flow_run

    try:
        outcome = _optimize(request)
    except Exception as exc:
        _tag(request.report_to, outcome_tags(None, exc.render() if isinstance(exc, KilnError) else
                                              f"{type(exc).__name__}: {exc}", flow_run.id))
        raise
    outcome.tagged = _tag(request.report_to, outcome_tags(outcome, run=flow_run.id))
    return outcome


def _tag(version: RegistryVersion, tags: dict[str, str]) -> bool:
    """Tag the registry's version; a registry that refuses leaves what was published as it is (the failed task
    run and this log line say so)."""
    state = tag_model_version(version, tags, return_state=True)
    if state.is_failed():
        get_run_logger().error("the outcome was not written to %s %s version %s: %s", version.registry,
                               version.name, version.version, state.message)
    return not state.is_failed()


def _optimize(request: OptimizeRequest) -> OptimizeOutcome:
    if request.upload:  # fail in seconds, not after hours of tuning, when the destination cannot take the result
        check_upload(request.upload)
    if request.image:
        check_image(request.image)
    checked = validate_program(request)
    plans = make_plans(request, checked)
    prepared = prepare_model(checked)
    ref = run_reference(checked, plans[0])
    runs = [_for_target(checked, prepared, ref, plan) for plan in plans]
    plan = plans[0]
    if all(run.choice.kept for run in runs):
        message = "; ".join(run.choice.message or "" for run in runs)
        report_result(plan.name, runs[0].evaluation.candidates, runs[0].choice.selected.name, None, None, message)
        return OptimizeOutcome.of_kept(plan.incumbent, runs[0].evaluation.candidates, message)
    manifest = publish_artifact(checked, prepared, runs)
    outcome = OptimizeOutcome.of_published(manifest, ArtifactStore(request.store).folder(manifest))
    report_result(plan.name, manifest.candidates, manifest.selected, outcome.artifact, outcome.speedup)
    if request.upload:
        outcome.upload = upload_artifact(outcome.artifact, request.upload)
    if request.image:
        outcome.image = build_image(outcome.artifact, request.image)["reference"]
    return outcome


def _for_target(checked: CheckedProgram, prepared: PreparedModel, ref: ReferenceData, plan: Plan) -> TargetRun:
    """One target's candidates built, compiled, evaluated and judged by the gate (each target its own choice)."""
    title = plan.name if not plan.fleet else f"{plan.name} for {plan.target.name}"
    built = build_candidates(checked, prepared, ref, plan)
    for name in plan.compiled:
        source = int8_source(name, built)  # a TVM int8 candidate lowers an onnxruntime int8 build
        job = compile_job(checked, prepared, plan, name, source)
        state = compile_tvm(checked, job, plan, return_state=True)
        if state.name == "Cached":  # Prefect found the build by its content hash: no tuning ran
            progress.report("tune", plan.request.trials, plan.request.trials, "cached build, no tuning")
        built.append(state.result())
    evaluation = evaluate_candidates(checked, ref, built, plan)
    try:
        choice = choose_winner(checked, ref, evaluation, plan)
    except GateError as exc:
        report_candidates(title, evaluation.candidates)
        report_result(title, evaluation.candidates, None, None, None, exc.message)
        raise
    report_candidates(title, evaluation.candidates)
    return TargetRun(plan, evaluation, choice)
