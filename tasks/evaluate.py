"""evaluate: metrics and latency of every candidate, all in this process with the same thread count."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task

from kiln import progress
from kiln.datasets import gather_outputs
from kiln.manifest import CandidateResult, LatencyMs, MetricResult
from kiln.runtime.latency import measure
from kiln.runtime.runners import open_runner
from tasks.models import BuiltCandidate, CheckedProgram, Evaluation, ReferenceData
from tasks.reference import compute_metrics, load_eval, run_all


def baseline(checked: CheckedProgram) -> BuiltCandidate:
    """The unoptimized model in onnxruntime with its default (all) graph optimizations."""
    return BuiltCandidate(name="onnxruntime", backend="onnxruntime", path=checked.model_path,
                          settings={"optimization": "all"})


INCUMBENT = "current"


def incumbent(artifact: str) -> BuiltCandidate:
    """The version in service, measured again beside the challengers (same process, data and threads)."""
    from kiln.manifest import Manifest

    manifest = Manifest.read(Path(artifact))
    return BuiltCandidate(name=INCUMBENT, backend=manifest.backend, path=str(Path(artifact) / manifest.model.path),
                          settings={**manifest.settings, "version": manifest.version, "artifact": manifest.id})


@task(name="evaluate")
def evaluate(checked: CheckedProgram, ref: ReferenceData, built: list[BuiltCandidate], threads: int,
             latency_repeats: int = 200, latency_seconds: float = 5.0) -> Evaluation:
    logger = get_run_logger()
    os.environ["TVM_NUM_THREADS"] = str(threads)
    prog = checked.load()
    metrics = prog.program.get_metrics()
    fds, reference, labels, batched = load_eval(ref.path)
    results = []
    for i, cand in enumerate(built):
        progress.report("evaluate", i, len(built), cand.name)
        if cand.error or not cand.path:
            results.append(CandidateResult(name=cand.name, backend=cand.backend, settings=cand.settings,
                                           reasons=[cand.error if cand.error and cand.error.startswith("skipped")
                                                    else f"build failed: {cand.error}"],
                                           build_seconds=cand.build_seconds))
            continue
        settings = {"threads": threads, **cand.settings}  # a candidate may choose its own thread count
        runner = None
        try:
            runner = open_runner(cand.backend, Path(cand.path), checked.inputs, checked.outputs,
                                 threads=settings["threads"], settings=settings)
            outputs = gather_outputs(run_all(runner.run, fds), ref.samples, batched)
        except Exception as exc:  # a candidate that cannot load or run is reported, never fatal
            if runner:
                runner.close()
            if cand.name == "onnxruntime":
                raise
            logger.warning("%s failed to run: %s", cand.name, exc)
            results.append(CandidateResult(name=cand.name, backend=cand.backend, settings=settings,
                                           reasons=[f"failed to run: {type(exc).__name__}: {str(exc)[:200]}"],
                                           build_seconds=cand.build_seconds))
            continue
        try:
            values = compute_metrics(metrics, outputs, reference, labels, where=cand.name)
            lat = measure(lambda r=runner: r.run(fds[0]), repeats=latency_repeats, max_seconds=latency_seconds)
        finally:
            runner.close()
        metric_results, reasons = {}, []
        for m in metrics:
            ok = m.range.check(values[m.name], ref.metrics.get(m.name), m.higher_is_better)
            desc = m.range.describe(ref.metrics.get(m.name), m.higher_is_better)
            metric_results[m.name] = MetricResult(value=values[m.name], range=desc, passed=ok)
            if not ok:
                reasons.append(f"{m.name} = {values[m.name]:.6g}, outside {desc}")
        latency = LatencyMs(p50=lat.p50, p90=lat.p90)
        results.append(CandidateResult(name=cand.name, backend=cand.backend, latency_ms=latency,
                                       metrics=metric_results, passed=not reasons, reasons=reasons, settings=settings,
                                       build_seconds=cand.build_seconds))
        logger.info("%s: p50 %.4f ms, p90 %.4f ms (%d runs), metrics %s, %s", cand.name, lat.p50, lat.p90,
                    lat.runs, {k: round(v, 6) for k, v in values.items()}, "passed" if not reasons else reasons)
    progress.report("evaluate", len(built), len(built))
    return Evaluation(candidates=results, built=built)
