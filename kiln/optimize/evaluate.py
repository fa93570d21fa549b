"""evaluate: metrics and latency of every candidate, all in this process with the same thread count."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from kiln.artifact.manifest import CandidateResult, LatencyMs, Manifest, RunSettings
from kiln.optimize.feeds import gather_outputs, load_eval, run_all
from kiln.optimize.models import BuiltCandidate, CheckedProgram, Evaluation, ReferenceData
from kiln.optimize.scoring import compute_metrics, score
from kiln.runtime.latency import measure
from kiln.runtime.runners import open_runner

INCUMBENT = "current"  # the version in service, when a re-optimization measures it beside the challengers
_log = logging.getLogger("kiln.optimize")


def incumbent(artifact: str) -> BuiltCandidate:
    """The version in service, measured again beside the challengers (same process, data and threads)."""
    manifest = Manifest.read(Path(artifact))
    return BuiltCandidate(name=INCUMBENT, backend=manifest.backend, path=str(Path(artifact) / manifest.model.path),
                          settings=manifest.settings.merged(version=manifest.version, artifact=manifest.id))


def _unbuilt(cand: BuiltCandidate) -> CandidateResult:
    skipped = bool(cand.error and cand.error.startswith("skipped"))
    return CandidateResult(name=cand.name, backend=cand.backend, settings=cand.settings,
                           reasons=[cand.error if skipped else f"build failed: {cand.error}"],
                           build_seconds=cand.build_seconds)


def evaluate(checked: CheckedProgram, ref: ReferenceData, built: list[BuiltCandidate], threads: int,
             latency_repeats: int = 200, latency_seconds: float = 5.0,
             log: logging.Logger | logging.LoggerAdapter = _log,
             on_progress: Callable[[int, int, str], None] | None = None) -> Evaluation:
    """Run every built candidate on the evaluation feeds, score it against the reference, and time it.

    A candidate that cannot load or run is reported with its reason, never fatal, except the baseline."""
    os.environ["TVM_NUM_THREADS"] = str(threads)  # TVM reads it once, when its thread pool starts
    metrics = checked.load().program.get_metrics()
    fds, reference, labels, batch = load_eval(ref.path)
    results = []
    for i, cand in enumerate(built):
        if on_progress:
            on_progress(i, len(built), cand.name)
        if cand.error or not cand.path:
            results.append(_unbuilt(cand))
            continue
        settings = RunSettings(threads=threads).merged(**cand.settings.model_dump(exclude_none=True))
        runner = None
        try:
            runner = open_runner(cand.backend, Path(cand.path), checked.inputs, checked.outputs, settings)
            outputs = gather_outputs(run_all(runner.run, fds), ref.samples, batch)
        except Exception as exc:
            if runner:
                runner.close()
            if cand.baseline:
                raise
            log.warning("%s failed to run: %s", cand.name, exc)
            results.append(CandidateResult(name=cand.name, backend=cand.backend, settings=settings,
                                           reasons=[f"failed to run: {type(exc).__name__}: {str(exc)[:200]}"],
                                           build_seconds=cand.build_seconds))
            continue
        try:
            values = compute_metrics(metrics, outputs, reference, labels, where=cand.name)
            lat = measure(lambda r=runner: r.run(fds[0]), repeats=latency_repeats, max_seconds=latency_seconds)
        finally:
            runner.close()
        metric_results, reasons = score(metrics, values, ref.metrics)
        results.append(CandidateResult(name=cand.name, backend=cand.backend,
                                       latency_ms=LatencyMs(p50=lat.p50, p90=lat.p90), metrics=metric_results,
                                       passed=not reasons, reasons=reasons, settings=settings,
                                       build_seconds=cand.build_seconds))
        log.info("%s: p50 %.4f ms, p90 %.4f ms (%d runs), metrics %s, %s", cand.name, lat.p50, lat.p90,
                 lat.runs, {k: round(v, 6) for k, v in values.items()}, "passed" if not reasons else reasons)
    if on_progress:
        on_progress(len(built), len(built), "")
    return Evaluation(candidates=results, built=built)
