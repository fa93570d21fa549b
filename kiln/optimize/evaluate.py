"""evaluate: metrics and latency of every candidate, each in a child process with the same thread count.

The confirmation (kiln.optimize.confirm) reuses both halves: `evaluate_one` on the held-out samples and
`time_candidates` over its inputs, so a winner is run, checked and timed there exactly as here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from kiln.artifact.manifest import BASELINE, INCUMBENT, CandidateResult, LatencyMs, Manifest, RunSettings
from kiln.config import settings
from kiln.errors import ModelError
from kiln.optimize import on_device
from kiln.optimize.defaults import EMULATION_SLOWDOWN, LATENCY_REPEATS, LATENCY_SECONDS, PROBE_INPUTS, PROBE_WORTH_S
from kiln.optimize.emulation import run_emulated
from kiln.optimize.feeds import gather_outputs, load_eval, run_all
from kiln.optimize.isolation import IsolationError, run_isolated
from kiln.optimize.models import BuiltCandidate, CheckedProgram, Evaluation, ReferenceData
from kiln.optimize.on_device import DeviceUse
from kiln.optimize.padded_reference import padding_misses
from kiln.optimize.scoring import compute_metrics, score
from kiln.optimize.traffic import Feed, Traffic, plan_timing, time_over
from kiln.program import ragged
from kiln.runtime.runners import open_runner

__all__ = ["INCUMBENT", "evaluate", "incumbent"]
_log = logging.getLogger("kiln.optimize")
STOPPED_EARLY = "stopped early"


def incumbent(artifact: str, target: str = "host") -> BuiltCandidate:
    """The version in service, measured again beside the challengers (same process, data and threads): its build
    for `target`, where it holds one per target."""
    manifest = Manifest.read(Path(artifact))
    build = manifest.build_for(target)
    manifest = manifest.view(build) if build else manifest
    return BuiltCandidate(name=INCUMBENT, backend=manifest.backend, path=str(Path(artifact) / manifest.model.path),
                          settings=manifest.settings.merged(version=manifest.version, artifact=manifest.id))


FAILED = "failed to run"


def failed(result: CandidateResult) -> bool:
    """It raised, crashed or gave outputs of the wrong shape (not: it missed a range)."""
    return any(r.startswith(FAILED) for r in result.reasons)


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _stopped(result: CandidateResult) -> bool:
    return any(r.startswith(STOPPED_EARLY) for r in result.reasons)


def _unbuilt(cand: BuiltCandidate) -> CandidateResult:
    skipped = bool(cand.error and cand.error.startswith("skipped"))
    return CandidateResult(name=cand.name, backend=cand.backend, settings=cand.settings,
                           reasons=[cand.error if skipped else f"build failed: {cand.error}"],
                           build_seconds=cand.build_seconds)


def tuning_notes(cand: BuiltCandidate) -> list[str]:
    """What a user of a tuned candidate must know: how much of the search was spent and lost."""
    t = cand.tuning
    if t is None:
        return []
    pipeline = [f"kiln passes: {', '.join(t.pipeline)}"] if t.pipeline else []
    if t.int8 is not None:
        sums = "exact" if t.int8.exact else "int16 sums saturate"
        pipeline.append(f"int8 kernels: {t.int8.intrinsic} on {t.int8.isa} ({sums}), "
                        f"{len(t.int8.lowered)} matmul(s) lowered: {', '.join(t.int8.lowered)}"
                        + (f"; not lowered: {'; '.join(t.int8.not_lowered)}" if t.int8.not_lowered else ""))
    if cand.cached:
        return ["tuning: none this run (the build of an earlier run with the same model, target and budget)",
                *pipeline]
    measured = sum(k.best_us is not None for k in t.per_task)
    return [f"tuning: {t.trials_run} trials ({t.failed_trials} failed), {measured}/{t.tasks} tasks measured, "
            f"stopped by {t.stopped_by}" + (f", estimated {t.estimated_ms:.3g} ms" if t.estimated_ms else "")
            + (f"; started from {t.seeded_records} records other models tuned on this CPU" if t.seeded_records
               else ""), *pipeline, *t.warnings]


def shape_mismatch(outputs: dict, reference: dict) -> str | None:
    """Where a candidate's outputs differ in shape from the reference's (a per-bucket build that did not cut an
    output back), said; None when every one matches. A metric would fail on it as if the program were wrong."""
    for name, ref in reference.items():
        got = outputs.get(name)
        if got is None:
            return f"output {name!r} is missing"
        pairs = zip(ragged.samples(got), ragged.samples(ref), strict=False) \
            if ragged.is_ragged(got) or ragged.is_ragged(ref) else [(np.asarray(got), np.asarray(ref))]
        for i, (a, b) in enumerate(pairs):
            if np.shape(a) != np.shape(b):
                return f"output {name!r} has shape {list(np.shape(a))} where the reference has {list(np.shape(b))}" \
                       + (f" (sample {i})" if ragged.is_ragged(ref) else "")
    return None


def probe_ms(run, fds: list) -> float:
    """Milliseconds per input over the first PROBE_INPUTS inputs, after one warm-up call: a first look at
    speed, enough to tell a hopeless candidate (KILN_HOPELESS_SLOWDOWN) from a contender."""
    inputs = fds[:PROBE_INPUTS]
    run(inputs[0])
    start = time.perf_counter()
    for feed in inputs:
        run(feed)
    return (time.perf_counter() - start) * 1e3 / len(inputs)


def evaluate_one(checked: CheckedProgram, ref: ReferenceData, cand: BuiltCandidate, settings: RunSettings,
                 baseline_ms: float | None = None, hopeless: float = 0.0, held_out: bool = False,
                 device: DeviceUse | None = None) -> tuple[CandidateResult, float | None]:
    """One candidate's accuracy, in its child process: run it on every feed of the selection split (or, with
    `held_out`, of the held-out one), check its outputs' shapes and score it; with its probe latency. A
    candidate that cannot load or run comes back with its reason; one `hopeless` times slower than the
    baseline's probe (KILN_HOPELESS_SLOWDOWN) is stopped before its accuracy is measured; a metric that raises
    is the program's mistake and is raised. With a `device`, it runs there (its code needs a CPU this host is
    not) and is scored here on the outputs it sends back."""
    os.environ["TVM_NUM_THREADS"] = str(settings.threads)  # TVM reads it once, when its thread pool starts
    metrics = checked.load().program.get_metrics()
    path, samples, expected = (ref.held_out_path, ref.held_out_samples, ref.held_out_metrics) if held_out else \
        (ref.path, ref.samples, ref.metrics)
    fds, reference, labels, batch = load_eval(path)
    runner = None
    probe = None
    try:
        if device is not None:
            outputs = gather_outputs(on_device.outputs_of(device, checked, cand, settings, fds), samples, batch)
            mismatch = shape_mismatch(outputs, reference)
            if mismatch:
                raise ValueError(mismatch)
            return _scored(checked, cand, settings, metrics, outputs, reference, labels, expected), None
        runner = open_runner(cand.backend, Path(cand.path or ""), checked.inputs, checked.outputs, settings,
                             checked.profile)
        probe = probe_ms(runner.run, fds)
        costly = probe * len(fds) / 1e3 > PROBE_WORTH_S  # tiny models are cheap to judge: judge them
        if baseline_ms and hopeless and costly and probe > hopeless * baseline_ms:
            return CandidateResult(name=cand.name, backend=cand.backend, settings=settings,
                                   reasons=[f"{STOPPED_EARLY}: {probe / baseline_ms:.0f}x slower than {BASELINE} on "
                                            f"the first {min(PROBE_INPUTS, len(fds))} inputs ({probe:.3g} vs "
                                            f"{baseline_ms:.3g} ms); its accuracy was not measured"],
                                   build_seconds=cand.build_seconds), probe
        outputs = gather_outputs(run_all(runner.run, fds), samples, batch)
        mismatch = shape_mismatch(outputs, reference)
        if mismatch:
            raise ValueError(mismatch)
    except Exception as exc:
        return CandidateResult(name=cand.name, backend=cand.backend, settings=settings,
                               reasons=[f"{FAILED}: {_said(exc)}"], build_seconds=cand.build_seconds), probe
    finally:
        if runner:
            runner.close()
    result = _scored(checked, cand, settings, metrics, outputs, reference, labels, expected)
    if not result.passed and settings.buckets:
        why = padding_misses(checked, settings, fds, samples, batch, metrics, reference, labels, expected)
        result.reasons.extend([why] if why else [])
    return result, probe


def _scored(checked: CheckedProgram, cand: BuiltCandidate, settings: RunSettings, metrics, outputs, reference,
            labels, expected) -> CandidateResult:
    values = compute_metrics(metrics, outputs, reference, labels, where=cand.name)
    metric_results, reasons = score(metrics, values, expected)
    return CandidateResult(name=cand.name, backend=cand.backend, metrics=metric_results, passed=not reasons,
                           reasons=reasons, settings=settings, build_seconds=cand.build_seconds)


def emulated(checked: CheckedProgram, ref: ReferenceData, cand: BuiltCandidate, run_settings: RunSettings,
             limits: dict) -> CandidateResult:
    """evaluate_one on qemu's CPU model `cand.emulator` (tens of times slower than the host: the time limit grows
    by EMULATION_SLOWDOWN); never timed, so it never wins over the baseline."""
    timeout = limits["timeout"] and limits["timeout"] * EMULATION_SLOWDOWN
    try:
        result, _ = run_emulated(cand.emulator, evaluate_one, checked, ref, cand, run_settings,
                                 what=f"candidate {cand.name}", timeout=timeout)
    except IsolationError as exc:
        result = CandidateResult(name=cand.name, backend=cand.backend, settings=run_settings,
                                 reasons=[f"{FAILED}: {exc.message.removeprefix(f'candidate {cand.name} ')}"],
                                 build_seconds=cand.build_seconds)
    if cand.not_timed:
        result.reasons.append(cand.not_timed)
    return result


def spread(count: int, wanted: int) -> list[int]:
    """Up to `wanted` indices spread evenly over `count` inputs (all of them when there are fewer)."""
    if count <= wanted:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, wanted).round()})


def timed_inputs(fds: list[Feed], checked: CheckedProgram, static_inputs: int = 1) -> Traffic:
    """Which inputs each timed call runs through: with samples of several shapes, the ones kiln.optimize.traffic
    stratifies by size; with one shape, `static_inputs` spread over the feeds (the selection rounds: the first)."""
    traffic = plan_timing(fds, checked.profile)
    if traffic.shares:
        return traffic
    return Traffic(feeds=len(fds), timed=spread(len(fds), static_inputs))


class Timed(BaseModel):
    """Latencies of the candidates that ran, what they were timed over, and why each other one was not timed."""

    latency_ms: dict[str, LatencyMs] = Field(default_factory=dict)
    traffic: Traffic | None = None
    failed: dict[str, str] = Field(default_factory=dict)
    device_rounds: int = 0  # timing rounds a device served (kiln.optimize.on_device)


class _RunFailed(Exception):
    def __init__(self, name: str, reason: str):
        super().__init__(name, reason)
        self.name, self.reason = name, reason


def _named(name: str, run: Callable[[Feed], object]) -> Callable[[Feed], object]:
    """`run`, whose exception says which candidate raised it."""
    def call(feed: Feed) -> object:
        try:
            return run(feed)
        except Exception as exc:
            raise _RunFailed(name, _said(exc)) from exc
    return call


def time_together(checked: CheckedProgram, paths: list[str], cands: list[tuple[BuiltCandidate, RunSettings]],
                  repeats: int, seconds: float, static_inputs: int = 1) -> Timed:
    """Latency of every candidate, in one child process, timed in interleaved rounds over the inputs
    `timed_inputs` picks from the feeds of `paths` (eval.npz files). One that fails to load or raises is
    named with its reason and the others are timed again without it."""
    threads = {s.threads for _, s in cands if s.threads}
    os.environ["TVM_NUM_THREADS"] = str(max(threads or {1}))
    fds = [feed for path in paths for feed in load_eval(path)[0]]
    traffic = timed_inputs(fds, checked, static_inputs)
    inputs = [fds[i] for i in traffic.timed]
    runners, out = {}, Timed(traffic=traffic)
    try:
        for cand, settings in cands:
            try:
                runners[cand.name] = open_runner(cand.backend, Path(cand.path or ""), checked.inputs,
                                                 checked.outputs, settings, checked.profile)
            except Exception as exc:
                out.failed[cand.name] = f"{FAILED}: {_said(exc)}"
        while runners:
            try:
                out.latency_ms = time_over({n: _named(n, r.run) for n, r in runners.items()}, inputs, traffic,
                                           repeats, seconds)
                break
            except _RunFailed as exc:
                out.failed[exc.name] = f"{FAILED} while timed: {exc.reason}"
                runners.pop(exc.name).close()
    finally:
        for r in runners.values():
            r.close()
    return out


def time_candidates(checked: CheckedProgram, paths: list[str], runnable: list[tuple[BuiltCandidate, RunSettings]],
                    repeats: int, seconds: float, limits: dict, log: logging.Logger | logging.LoggerAdapter = _log,
                    static_inputs: int = 1, what: str = "timing the candidates", device: DeviceUse | None = None
                    ) -> Timed:
    """All together in interleaved rounds (the selection's and the confirmation's timing alike); one that
    raises is named and the others timed without it; if the child dies (one candidate crashed only when
    timed), each alone, so the one that crashes is named and the others still get a latency (without
    pairing). With a `device`, the rounds run there instead (kiln.optimize.on_device). The caller decides what
    a failure means (the baseline's stops the run)."""
    if not runnable:
        return Timed()
    if device is not None:
        fds = [feed for path in paths for feed in load_eval(path)[0]]
        traffic = timed_inputs(fds, checked, static_inputs)
        log.info("%s on the device %s", what, device.address)
        there = on_device.time_rounds(device, checked, runnable, [fds[i] for i in traffic.timed], traffic, repeats,
                                      seconds)
        return Timed(latency_ms=there.latency_ms, traffic=traffic,
                     failed={n: f"{FAILED} while timed: {why}" for n, why in there.failed.items()},
                     device_rounds=there.rounds)
    together = {**limits, "timeout": limits["timeout"] and limits["timeout"] * len(runnable)}
    try:
        return run_isolated(time_together, checked, paths, runnable, repeats, seconds, static_inputs, what=what,
                            **together)
    except IsolationError as exc:
        if len(runnable) == 1:
            return Timed(failed={runnable[0][0].name: f"{FAILED} while timed: {exc.message}"})
        log.warning("%s in interleaved rounds failed (%s); timing each candidate alone", what, exc.message)
    out = Timed()
    for cand, run_settings in runnable:
        try:
            one = run_isolated(time_together, checked, paths, [(cand, run_settings)], repeats, seconds,
                               static_inputs, what=f"timing candidate {cand.name}", **limits)
            out.latency_ms.update(one.latency_ms)
            out.failed.update(one.failed)
            out.traffic = one.traffic
        except IsolationError as exc:
            out.failed[cand.name] = f"{FAILED} while timed: {exc.message}"
    return out


def evaluate(checked: CheckedProgram, ref: ReferenceData, built: list[BuiltCandidate], threads: int,
             latency_repeats: int = LATENCY_REPEATS, latency_seconds: float = LATENCY_SECONDS,
             log: logging.Logger | logging.LoggerAdapter = _log,
             on_progress: Callable[[int, int, str], None] | None = None, device: DeviceUse | None = None
             ) -> Evaluation:
    """Run every built candidate on the evaluation feeds, score it against the reference, and time it.

    Each candidate runs in its own child process with the same thread count, time and memory limits: one
    that cannot load or run, crashes (compiled code can segfault), hangs or runs out of memory is reported
    with its reason and the run goes on. Only the baseline must run."""
    cfg = settings()
    limits = dict(timeout=cfg.candidate_timeout_s, memory_mb=cfg.candidate_memory_limit_mb,
                  timeout_hint="KILN_CANDIDATE_TIMEOUT_S")
    results, runnable = [], []
    baseline_ms = None
    for i, cand in enumerate(built):
        if on_progress:
            on_progress(i, len(built) + 1, cand.name)
        if cand.error or not cand.path:
            results.append(_unbuilt(cand))
            continue
        notes = tuning_notes(cand)
        run_settings = RunSettings(threads=threads).merged(**cand.settings.model_dump(exclude_none=True))
        if cand.emulator:  # its code does not run here: accuracy on the emulated CPU, speed not measured
            result = emulated(checked, ref, cand, run_settings, limits)
            result.notes = notes
            results.append(result)
            continue
        try:
            result, probe = run_isolated(evaluate_one, checked, ref, cand, run_settings,
                                         None if cand.baseline else baseline_ms, cfg.hopeless_slowdown,
                                         device=device if cand.judge_on_device else None,
                                         what=f"candidate {cand.name}", **limits)
            if cand.baseline:
                baseline_ms = probe
        except IsolationError as exc:
            if cand.baseline:
                raise
            result = CandidateResult(name=cand.name, backend=cand.backend, settings=run_settings,
                                     reasons=[f"failed to run: {exc.message.removeprefix(f'candidate {cand.name} ')}"],
                                     build_seconds=cand.build_seconds)
        if not failed(result) and not _stopped(result):  # it ran: it is timed with the others
            runnable.append((cand, run_settings))
        elif cand.baseline:
            raise ModelError(f"the unoptimized model does not run in onnxruntime: {'; '.join(result.reasons)}",
                             where=checked.model_path)
        result.notes = notes
        results.append(result)
    if on_progress:
        on_progress(len(built), len(built) + 1, "timing in interleaved rounds")
    timed = time_candidates(checked, [ref.path], runnable, latency_repeats, latency_seconds, limits, log,
                            device=device)
    base = next((cand.name for cand, _ in runnable if cand.baseline and cand.name in timed.failed), None)
    if base:
        raise ModelError(f"the unoptimized model does not run in onnxruntime: {timed.failed[base]}",
                         where=checked.model_path)
    traffic = timed.traffic
    if traffic is not None and traffic.shares:
        log.info("timed over %s", traffic.describe())
    for result in results:
        result.latency_ms = timed.latency_ms.get(result.name)
        if result.name in timed.failed:
            result.reasons.append(timed.failed[result.name])
        if result.latency_ms is None:
            log.warning("%s %s", result.name, "; ".join(result.reasons))
        else:
            log.info("%s: p50 %.4f ms (p10-p90 %.4f-%.4f), metrics %s, %s", result.name, result.latency_ms.p50,
                     result.latency_ms.p10, result.latency_ms.p90, {k: m.value for k, m in result.metrics.items()},
                     "inside every range" if result.passed else result.reasons)
    if on_progress:
        on_progress(len(built) + 1, len(built) + 1, "")
    return Evaluation(candidates=results, built=built, traffic=traffic, device_rounds=timed.device_rounds)
