"""confirm: the gate's winner timed again, and judged on held-out samples, before anything is published.

The selection rounds time every candidate on the first evaluation input and the gate takes the best of up to
~20 ratios: the largest of many noisy estimates is biased upward (the winner's curse), and one input is not the
traffic. So the winner, the baseline and the incumbent are timed again in fresh interleaved rounds, each call
running through several evaluation inputs (kiln.optimize.defaults.CONFIRM_INPUTS, spread over the split), and
the artifact claims that speed-up; if it is not beyond the noise and by min_gain, the winner does not ship: the
version in service stays, or else the unchanged model ships, as when nothing beats it in the selection. The
winner's accuracy is measured on the held-out samples (kiln.optimize.reference.split_held_out), which neither
the accuracy-aware fallback nor the gate saw; outside a range there, it does not ship either.

`choose` is the one decision of what ships: the gate, then this confirmation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from kiln.artifact.manifest import BASELINE, CandidateResult, Confirmation
from kiln.config import settings
from kiln.errors import GateError
from kiln.optimize import gate, report
from kiln.optimize.defaults import CONFIRM_INPUTS, CONFIRM_SECONDS, LATENCY_REPEATS
from kiln.optimize.feeds import gather_outputs, load_eval, run_all
from kiln.optimize.isolation import run_isolated
from kiln.optimize.models import CheckedProgram, Evaluation, ReferenceData
from kiln.optimize.noise import speedup
from kiln.optimize.plan import Plan
from kiln.optimize.scoring import compute_metrics, score
from kiln.optimize.traffic import plan_timing, time_over
from kiln.runtime.runners import open_runner

_log = logging.getLogger("kiln.optimize")


class Choice(BaseModel):
    """What ships: the confirmed winner, or the incumbent kept (`kept`, with the message that says why)."""

    selected: CandidateResult
    confirmation: Confirmation | None = None  # None: the baseline or the incumbent, nothing to confirm
    kept: bool = False
    message: str | None = None


def choose(checked: CheckedProgram, ref: ReferenceData, evaluation: Evaluation, plan: Plan,
           log: logging.Logger | logging.LoggerAdapter = _log) -> Choice:
    """The gate's pick, confirmed; GateError (with the table) when nothing may ship."""
    incumbent, min_gain = plan.incumbent_name, plan.request.min_gain
    selected = gate.choose(evaluation.candidates, incumbent, min_gain, evaluation.traffic)
    confirmation = None
    if selected.name not in (BASELINE, incumbent):
        confirmation = confirm(checked, ref, evaluation, selected, incumbent, log)
        problem = verdict(confirmation, selected.name, min_gain, incumbent)
        if problem:
            selected.reasons.append(problem)  # the winner's row says why it did not ship
            if incumbent:
                current = next(c for c in evaluation.candidates if c.name == incumbent)
                return Choice(selected=current, kept=True, message=f"{problem}; the current version "
                                                                   f"({plan.incumbent}) stays")
            base = next((c for c in evaluation.candidates if c.name == BASELINE), None)
            if base is None or not base.eligible:
                raise GateError(f"{problem}; nothing was published", report.text(evaluation.candidates),
                                hint="a speed-up inside the noise is not one (re-run on a quieter machine); a range "
                                     "missed on held-out samples means the accuracy did not carry over")
            # as when nothing beats it in the selection: the unchanged model ships, and the winner's row says why not
            return Choice(selected=base, message=f"{problem}; {BASELINE} (the unchanged model) was published")
    if selected.name == incumbent:
        return Choice(selected=selected, kept=True,
                      message=f"the current version ({plan.incumbent}) is still the fastest inside every range; no "
                              f"candidate beat it beyond the noise and by {min_gain:.0%}")
    return Choice(selected=selected, confirmation=confirmation)


def spread(count: int, wanted: int = CONFIRM_INPUTS) -> list[int]:
    """Up to `wanted` indices spread evenly over `count` inputs (all of them when there are fewer)."""
    if count <= wanted:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, wanted).round()})


def verdict(conf: Confirmation, winner: str, min_gain: float, incumbent: str | None = None) -> str | None:
    """Why the confirmed winner may not ship, or None. Decided on numbers alone, so it can be tested with
    controlled timings."""
    if conf.held_out_passed is False:
        missed = "; ".join(f"{n} = {m.value:.6g}, outside {m.range}" for n, m in conf.held_out.items()
                           if not m.passed)
        return f"{winner} is outside a range on the {conf.held_out_samples} held-out samples: {missed}"
    if not conf.speedup.beyond_noise(min_gain):
        return (f"{winner} was not confirmed faster than {BASELINE} beyond the noise and by {min_gain:.0%} when "
                f"timed again over {conf.inputs} inputs: {conf.speedup.describe()}")
    if incumbent and conf.vs_incumbent is not None and not conf.vs_incumbent.beyond_noise(min_gain):
        return (f"{winner} was not confirmed faster than the current version beyond the noise and by "
                f"{min_gain:.0%}: {conf.vs_incumbent.describe()}")
    return None


def confirm(checked: CheckedProgram, ref: ReferenceData, evaluation: Evaluation, winner: CandidateResult,
            incumbent: str | None = None, log: logging.Logger | logging.LoggerAdapter = _log) -> Confirmation:
    """The confirmation rounds and the held-out accuracy of `winner`, in a child process like every run of a
    candidate (compiled code can crash)."""
    cfg = settings()
    names = [winner.name, BASELINE, *([incumbent] if incumbent else [])]
    conf = run_isolated(measure, checked, ref, evaluation, names, what=f"confirming {winner.name}",
                        timeout=cfg.candidate_timeout_s, memory_mb=cfg.candidate_memory_limit_mb,
                        timeout_hint="KILN_CANDIDATE_TIMEOUT_S")
    log.info("confirmed over %d inputs: %s %s vs %s%s; held out (%d samples): %s", conf.inputs, winner.name,
             conf.speedup.describe(), BASELINE,
             f", {conf.vs_incumbent.describe()} vs the current version" if conf.vs_incumbent else "",
             conf.held_out_samples, {k: m.value for k, m in conf.held_out.items()} or "none")
    return conf


def measure(checked: CheckedProgram, ref: ReferenceData, evaluation: Evaluation, names: list[str]) -> Confirmation:
    """confirm's work, in the child: `names[0]` is the winner, `names[1]` the baseline, `names[2]` the incumbent."""
    results = {c.name: c for c in evaluation.candidates}
    built = {b.name: b for b in evaluation.built}
    os.environ["TVM_NUM_THREADS"] = str(max(results[n].settings.threads or 1 for n in names))
    fds = load_eval(ref.path)[0]
    held = load_eval(ref.held_out_path) if ref.held_out_path else None
    pool = fds + (held[0] if held else [])
    traffic = plan_timing(pool, checked.profile) if checked.profile else None
    inputs = [pool[i] for i in (traffic.timed if traffic and traffic.shares else spread(len(pool)))]
    runners = {}
    try:
        for name in names:
            runners[name] = open_runner(built[name].backend, Path(built[name].path or ""), checked.inputs,
                                        checked.outputs, results[name].settings, checked.profile)
        latency = time_over({n: r.run for n, r in runners.items()}, inputs, traffic, LATENCY_REPEATS,
                            CONFIRM_SECONDS)
        held_out, passed = {}, None
        if held:
            metrics = checked.load().program.get_metrics()
            outputs = gather_outputs(run_all(runners[names[0]].run, held[0]), ref.held_out_samples, held[3])
            values = compute_metrics(metrics, outputs, held[1], held[2], where=names[0])
            held_out, reasons = score(metrics, values, ref.held_out_metrics)
            passed = not reasons
    finally:
        for r in runners.values():
            r.close()
    winner, base = latency[names[0]], latency[names[1]]
    return Confirmation(inputs=len(inputs), latency_ms=latency, speedup=speedup(base, winner),
                        vs_incumbent=speedup(latency[names[2]], winner) if len(names) > 2 else None,
                        held_out_samples=ref.held_out_samples if held else 0, held_out=held_out,
                        held_out_passed=passed)
