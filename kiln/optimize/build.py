"""build: the baseline and every transform candidate (graph levels, int8) from the registry, in seconds each.

A candidate that fails to build is returned with its reason and never fails the run; the baseline must build.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from kiln.artifact.target import Target
from kiln.config import settings
from kiln.cpu import Int8Scheme
from kiln.optimize import candidates as registry
from kiln.optimize.evaluate import incumbent as incumbent_candidate
from kiln.optimize.feeds import load_calibration
from kiln.optimize.isolation import run_isolated
from kiln.optimize.models import BuiltCandidate, CheckedProgram, PreparedModel, ReferenceData

_log = logging.getLogger("kiln.optimize")


def build_one(name: str, context: registry.BuildContext, calibration_path: str | None,
              checked: CheckedProgram | None = None) -> registry.Built:
    """One candidate's build, in its child process (quantizers can crash, hang or exhaust memory)."""
    cand = registry.get(name)
    if calibration_path:
        context.calibration = load_calibration(calibration_path)
    if cand.accuracy_aware and checked is not None and context.calibration:
        from kiln.optimize.quantize.accuracy_aware import AccuracyCheck

        context.accuracy = AccuracyCheck.of(checked.load().program.get_metrics(), context.prepared,
                                            context.calibration, context.fallback_margin)
    return cand.build(context)


def build_candidates(checked: CheckedProgram, prepared: PreparedModel, ref: ReferenceData, names: list[str],
                     log: logging.Logger | logging.LoggerAdapter = _log, incumbent: str | None = None,
                     target: Target | None = None) -> list[BuiltCandidate]:
    """The `names` (the baseline first), and the `incumbent` artifact's module beside them when there is one;
    int8 rows quantized for the target's CPU (default: this one)."""
    int8 = Int8Scheme.for_target(target) if target else Int8Scheme.current()
    cfg = settings()
    out = []
    for name in names:
        cand = registry.get(name)
        is_baseline = cand.stage == "baseline"
        folder = checked.work_dir / "candidates" / name
        if target and not target.is_host:  # a fleet's targets quantize differently: each its own folder
            folder = checked.work_dir / "candidates" / target.slug / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)  # a concurrent run of the same program may have made it again
        start = time.perf_counter()
        if cand.needs_calibration and ref.calibration_path is None:
            reason = f"skipped: no calibration data ({ref.calibration_source or 'none'})"
            log.info("%s %s", name, reason)
            out.append(BuiltCandidate(name=name, backend=cand.backend, error=reason))
            continue
        context = registry.BuildContext(model=Path(checked.model_path), prepared=Path(prepared.path), out_dir=folder,
                                        calibration_method=checked.calibration_method, transformer=checked.transformer,
                                        max_fallback_rounds=checked.max_fallback_rounds,
                                        fallback_seconds=checked.fallback_seconds,
                                        fallback_margin=checked.fallback_margin, int8=int8)
        calibrate = cand.needs_calibration or cand.accuracy_aware
        try:
            built = run_isolated(build_one, name, context, ref.calibration_path if calibrate else None, checked,
                                 what=f"building candidate {name}", timeout=cfg.candidate_timeout_s,
                                 memory_mb=cfg.candidate_memory_limit_mb, timeout_hint="KILN_CANDIDATE_TIMEOUT_S")
        except registry.Skipped as exc:
            log.info("%s skipped: %s", name, exc.message)
            out.append(BuiltCandidate(name=name, backend=cand.backend, error=f"skipped: {exc.message}"))
            continue
        except Exception as exc:  # quantizer errors, unsupported ops, crashes: report and go on
            if is_baseline:
                raise
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.warning("%s failed to build: %s", name, message)
            out.append(BuiltCandidate(name=name, backend=cand.backend, error=message,
                                      build_seconds=time.perf_counter() - start))
            continue
        seconds = time.perf_counter() - start
        out.append(BuiltCandidate(name=name, backend=cand.backend, path=str(built.path), settings=built.settings,
                                  build_seconds=None if is_baseline else seconds, baseline=is_baseline))
        for attempt in built.attempts:  # accuracy-aware retries: each is measured and gated like any candidate
            out.append(BuiltCandidate(name=f"{name}-fallback{attempt.settings.fallback_round}", backend=cand.backend,
                                      path=str(attempt.path), settings=attempt.settings, build_seconds=seconds))
            kept, ops = attempt.settings.kept_fp32 or [], attempt.settings.quantized_ops
            log.info("%s: %s%d node(s) kept in fp32 (%s): %s", out[-1].name,
                     f"only {', '.join(ops)} quantized, " if ops else "", len(kept), ", ".join(kept[:8]),
                     attempt.settings.calibration_check)
        if not is_baseline:
            log.info("%s built in %.1f s", name, seconds)
        if is_baseline and incumbent:  # measured again beside the challengers: it is the one to beat
            out.append(incumbent_candidate(incumbent, target.name if target else "host"))
    return out
