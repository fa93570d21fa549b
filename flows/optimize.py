"""The `optimize` flow: validate -> prepare -> reference -> build/compile -> evaluate -> select -> publish -> report,
then, for a run a registry started, its outcome tagged on that model version (whether the run succeeded or not).

It only orchestrates: every stage is a task in tasks/ around a plain function of kiln.optimize, and which
candidates are built by which stage is data in the registry. Runs embedded (no PREFECT_API_URL) or on a server.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger

from kiln import progress
from kiln.artifact.manifest import BASELINE, Manifest, OptimizeOptions
from kiln.errors import GateError, KilnError
from kiln.optimize import candidates as registry
from kiln.optimize import report
from kiln.optimize.confirm import verdict
from kiln.optimize.evaluate import INCUMBENT
from kiln.optimize.evaluate import incumbent as incumbent_candidate
from kiln.optimize.request import OptimizeRequest, RegistryVersion
from kiln.registries.mlflow import outcome_tags
from tasks.image import check_image
from tasks.image import image as build_image
from tasks.registry import tag_model_version
from tasks.report import report_candidates, report_result
from tasks.stages import (
    build_candidates,
    compile_tvm,
    confirm_winner,
    evaluate_candidates,
    find_current,
    prepare_model,
    publish_artifact,
    run_reference,
    select,
    validate_program,
)
from tasks.upload import check_upload
from tasks.upload import upload as upload_artifact


@flow(name="optimize", log_prints=True)
def optimize(request: OptimizeRequest) -> dict:
    """Optimize a model program and publish the fastest candidate that stays inside every metric range.

    Args:
        request: what to optimize and how (program, shapes, trial budget, target, candidates, destinations).
    """
    if request.report_to is None:
        return _optimize(request)
    from prefect.runtime import flow_run

    try:
        result = _optimize(request)
    except Exception as exc:
        _tag(request.report_to, outcome_tags(None, exc.render() if isinstance(exc, KilnError) else
                                              f"{type(exc).__name__}: {exc}", flow_run.id))
        raise
    result["tagged"] = _tag(request.report_to, outcome_tags(result, run=flow_run.id))
    return result


def _tag(version: RegistryVersion, tags: dict[str, str]) -> bool:
    """Tag the registry's version; a registry that refuses leaves what was published as it is (the failed task
    run and this log line say so)."""
    state = tag_model_version(version, tags, return_state=True)
    if state.is_failed():
        get_run_logger().error("the outcome was not written to %s %s version %s: %s", version.registry,
                               version.name, version.version, state.message)
    return not state.is_failed()


def _optimize(r: OptimizeRequest) -> dict:
    chosen = r.chosen
    threads = r.threads or os.cpu_count() or 1
    if r.upload:  # fail in seconds, not after hours of tuning, when the destination cannot take the result
        check_upload(r.upload)
    if r.image:
        check_image(r.image)
    checked = validate_program(r.program, r.shapes, chosen, r.name, r.data, r.ranges)
    current = r.incumbent or (find_current(checked.name, r.store) if r.compare_with_current else None)
    prepared = prepare_model(checked)
    transforms = [*registry.of_stage(chosen, "baseline"), *registry.of_stage(chosen, "transform")]
    calibrate = any(registry.get(c).needs_calibration or registry.get(c).accuracy_aware for c in transforms)
    ref = run_reference(checked, threads, calibrate)
    built = build_candidates(checked, prepared, ref, transforms)
    if current:
        built.insert(1, incumbent_candidate(current))
    for name in registry.of_stage(chosen, "compile"):
        # reoptimize continues the search from the version in service; a plain re-run hits the build cache
        saved_db = str(Path(r.incumbent) / "tuning") if r.incumbent else None
        state = compile_tvm(checked, prepared, r.target, r.trials, r.max_trials_per_task, saved_db, r.tune_time,
                            name=name, return_state=True)
        if state.name == "Cached":  # Prefect found the build by its content hash: no tuning ran
            progress.report("tune", r.trials, r.trials, "cached build, no tuning")
        built.append(state.result())
    evaluation = evaluate_candidates(checked, ref, built, threads, r.latency_repeats)
    try:
        selected = select(evaluation, INCUMBENT if current else None, r.min_gain)
    except GateError as exc:
        report_candidates(checked.name, evaluation.candidates)
        report_result(checked.name, evaluation.candidates, None, None, None, exc.message)
        raise
    report_candidates(checked.name, evaluation.candidates)
    confirmation = None
    if selected.name not in (BASELINE, INCUMBENT):
        confirmation = confirm_winner(checked, ref, evaluation, selected, INCUMBENT if current else None)
        problem = verdict(confirmation, selected.name, r.min_gain, INCUMBENT if current else None)
        if problem and current and confirmation.held_out_passed is not False:
            selected = next(c for c in evaluation.candidates if c.name == INCUMBENT)
        elif problem:
            report_result(checked.name, evaluation.candidates, None, None, None, problem)
            raise GateError(f"{problem}; nothing was published", report.text(evaluation.candidates),
                            hint="a speed-up inside the noise is not one (re-run on a quieter machine); a range "
                                 "missed on held-out samples means the accuracy did not carry over")
    if selected.name == INCUMBENT:
        message = (f"the current version ({current}) is still the fastest inside every range; no candidate beat it "
                   f"beyond the noise and by {r.min_gain:.0%}")
        report_result(checked.name, evaluation.candidates, INCUMBENT, None, None, message)
        return {"artifact": current, "selected": INCUMBENT, "published": False, "name": checked.name,
                "message": message, "candidates": [c.model_dump(mode="json") for c in evaluation.candidates]}
    options = OptimizeOptions(trials=r.trials, max_trials_per_task=r.max_trials_per_task, tune_time=r.tune_time,
                              threads=threads,
                              candidates=chosen, latency_repeats=r.latency_repeats)
    artifact = publish_artifact(checked, prepared, evaluation, selected, r.target, r.store, options, confirmation)
    speedup = Manifest.read(Path(artifact)).speedup_vs_baseline
    report_result(checked.name, evaluation.candidates, selected.name, artifact, speedup)
    result = {"artifact": artifact, "selected": selected.name, "speedup_vs_baseline": speedup, "published": True}
    if r.upload:
        result["upload"] = upload_artifact(artifact, r.upload)
    if r.image:
        result["image"] = build_image(artifact, r.image)["reference"]
    return result
