"""The `optimize` flow: validate -> prepare -> reference -> compile -> evaluate -> select -> publish -> report.

It only orchestrates; every stage is a task in tasks/. Runs embedded (no PREFECT_API_URL) or against a server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from prefect import flow

from kiln import candidates as registry
from kiln import progress
from kiln.errors import GateError, KilnError
from kiln.manifest import Manifest
from tasks.build_ort import build_ort
from tasks.compile import compile_tvm
from tasks.evaluate import INCUMBENT, baseline, evaluate
from tasks.evaluate import incumbent as incumbent_candidate
from tasks.image import check_image
from tasks.image import image as build_image
from tasks.prepare import prepare
from tasks.publish import publish
from tasks.reference import reference
from tasks.report import report_candidates, report_result
from tasks.select import select
from tasks.upload import check_upload
from tasks.upload import upload as upload_artifact
from tasks.validate import validate



@flow(name="optimize", log_prints=True)
def optimize(
    program: str,
    shapes: dict[str, list[int]] | None = None,
    trials: int = 64,
    max_trials_per_task: int | None = None,
    target: Literal["llvm", "cuda"] = "llvm",
    candidates: list[str] | None = None,
    threads: int | None = None,
    store: str | None = None,
    latency_repeats: int = 200,
    upload: str | None = None,
    image: str | None = None,
    incumbent: str | None = None,
    min_gain: float = 0.02,
    name: str | None = None,
) -> dict:
    """Optimize a model program and publish the fastest candidate that stays inside every metric range.

    Args:
        program: a program folder, a .zip/.tar.gz of one, or a bare .onnx file: a path on the worker, a file://
            URI, or an s3:// URI (KILN_S3_* settings on the worker).
        shapes: concrete shapes for dynamic input dimensions, e.g. {"input": [1, 3, 224, 224]}.
        trials: total MetaSchedule trial budget for the TVM candidate (0 = apply the database, no search).
        max_trials_per_task: cap per tuning task (default: trials spread evenly over the tasks).
        target: llvm (this CPU) or cuda.
        candidates: which candidates to build besides the onnxruntime baseline: tvm and the names in
            kiln.candidates (ort-fp32-basic, ort-fp32-extended, ort-int8-dynamic, ort-int8-static);
            default: onnxruntime, tvm, ort-fp32-basic, ort-int8-dynamic, ort-int8-static.
        threads: threads for every backend while measuring (default: all cores).
        store: artifact store folder (default: KILN_STORE or ~/.kiln/store).
        latency_repeats: timed calls per candidate.
        upload: s3://BUCKET/PREFIX to upload the artifact to (KILN_S3_* settings on the worker).
        image: REGISTRY/NAME[:TAG] to build the model's runtime image as and push to (DOCKER_HOST on the worker).
        incumbent: the artifact now in service (set by reoptimize): TVM tuning continues from its database, it is
            measured beside the new candidates, and a new version is published only if it is faster.
        min_gain: how much faster (a fraction) a new candidate must be than the incumbent to replace it.
        name: the model's name in the store (default: the program's `name`, else its folder or file name).
    """
    chosen = list(candidates or registry.DEFAULT)
    known = registry.all_names()
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise KilnError(f"unknown candidates {unknown}", hint=f"choose from {known}")
    ort_variants = [c for c in chosen if c in registry.REGISTRY]
    threads = threads or os.cpu_count() or 1
    if upload:  # fail in seconds, not after hours of tuning, when the destination cannot take the result
        check_upload(upload)
    if image:
        check_image(image)
    checked = validate(program, shapes, chosen, name)
    prepared = prepare(checked)
    ref = reference(checked, threads, any(registry.get(c).needs_calibration for c in ort_variants))
    built = [baseline(checked)] + ([incumbent_candidate(incumbent)] if incumbent else [])
    if ort_variants:
        built.extend(build_ort(checked, prepared, ref, ort_variants))
    if "tvm" in chosen:
        saved_db = str(Path(incumbent) / "tuning") if incumbent else None
        state = compile_tvm(checked, prepared, target, trials, max_trials_per_task, saved_db, return_state=True)
        if state.name == "Cached":  # Prefect found the build by its content hash: no tuning ran
            progress.report("tune", trials, trials, "cached build, no tuning")
        built.append(state.result())
    evaluation = evaluate(checked, ref, built, threads, latency_repeats)
    report_candidates(checked.name, evaluation.candidates)
    try:
        selected = select(evaluation, INCUMBENT if incumbent else None, min_gain)
    except GateError as exc:
        report_result(checked.name, evaluation.candidates, None, None, None, exc.message)
        raise
    if selected.name == INCUMBENT:
        message = f"the current version is still the fastest inside every range: kept {incumbent}"
        report_result(checked.name, evaluation.candidates, INCUMBENT, None, None, message)
        return {"artifact": incumbent, "selected": INCUMBENT, "published": False}
    options = {"trials": trials, "max_trials_per_task": max_trials_per_task, "threads": threads,
               "candidates": chosen, "latency_repeats": latency_repeats}
    artifact = publish(checked, prepared, evaluation, selected, target, store, options)
    speedup = Manifest.read(Path(artifact)).speedup_vs_baseline
    report_result(checked.name, evaluation.candidates, selected.name, artifact, speedup)
    result = {"artifact": artifact, "selected": selected.name, "speedup_vs_baseline": speedup, "published": True}
    if upload:
        result["upload"] = upload_artifact(artifact, upload)
    if image:
        result["image"] = build_image(artifact, image)["reference"]
    return result
