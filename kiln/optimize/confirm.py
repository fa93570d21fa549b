"""confirm: the gate's winner timed again, and judged on held-out samples, before anything is published.

The selection rounds time every candidate on the first evaluation input and the gate takes the best of up to
~20 ratios: the largest of many noisy estimates is biased upward (the winner's curse), and one input is not the
traffic. So the winner, the baseline and the incumbent are timed again in fresh interleaved rounds (the
request's latency_repeats), each call running through several inputs of the evaluation and held-out splits
(kiln.optimize.defaults.CONFIRM_INPUTS spread over them; with samples of several shapes, the ones the
selection's stratification picks, kiln.optimize.traffic.TIMED_INPUTS), and the artifact claims that speed-up;
if it is not beyond the noise and by min_gain, the winner does not ship: the version in service stays, or else
the unchanged model ships, as when nothing beats it in the selection. The winner's accuracy is measured on the
held-out samples (kiln.optimize.reference.split_held_out), which neither the accuracy-aware fallback nor the
gate saw; outside a range there, it does not ship either. It is run and timed by the evaluation's own code
(kiln.optimize.evaluate), so a winner that raises, crashes or gives outputs of the wrong shape while confirmed
loses its place the same way, its row saying why.

`choose` is the one decision of what ships: the gate, then this confirmation.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from kiln.artifact.manifest import BASELINE, CandidateResult, Confirmation
from kiln.config import settings
from kiln.errors import GateError, KilnError, ModelError
from kiln.optimize import gate, report
from kiln.optimize.defaults import CONFIRM_INPUTS, CONFIRM_SECONDS, LATENCY_REPEATS
from kiln.optimize.evaluate import evaluate_one, failed, time_candidates
from kiln.optimize.isolation import IsolationError, run_isolated
from kiln.optimize.models import CheckedProgram, Evaluation, ReferenceData
from kiln.optimize.noise import speedup
from kiln.optimize.on_device import DeviceUse
from kiln.optimize.plan import Plan

_log = logging.getLogger("kiln.optimize")


class Choice(BaseModel):
    """What ships: the confirmed winner, or the incumbent kept (`kept`, with the message that says why)."""

    selected: CandidateResult
    confirmation: Confirmation | None = None  # None: the baseline or the incumbent, nothing to confirm
    kept: bool = False
    message: str | None = None


class NotConfirmed(KilnError):
    """The winner raised, crashed or gave outputs of the wrong shape while confirmed: it loses its place."""


def choose(checked: CheckedProgram, ref: ReferenceData, evaluation: Evaluation, plan: Plan,
           log: logging.Logger | logging.LoggerAdapter = _log) -> Choice:
    """The gate's pick, confirmed; GateError (with the table) when nothing may ship."""
    incumbent, min_gain = plan.incumbent_name, plan.request.min_gain
    pinned = plan.request.select
    selected = gate.choose(evaluation.candidates, incumbent, min_gain, evaluation.traffic, pinned)
    confirmation = None
    if selected.name not in (BASELINE, incumbent):
        try:
            confirmation = confirm(checked, ref, evaluation, selected, incumbent, plan.request.latency_repeats, log,
                                   device=plan.device)
            problem = verdict(confirmation, selected.name, min_gain, incumbent, speed=not pinned)
        except NotConfirmed as exc:
            confirmation, problem = None, exc.message
        if problem and pinned:  # the user's pick is published or nothing is
            selected.reasons.append(problem)
            raise GateError(f"{problem}; the selected candidate cannot ship, nothing was published",
                            report.text(evaluation.candidates), hint="--select another candidate, or leave it out")
        if problem:
            log.warning("%s", problem)
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


def verdict(conf: Confirmation, winner: str, min_gain: float, incumbent: str | None = None,
            speed: bool = True) -> str | None:
    """Why the confirmed winner may not ship, or None. Decided on numbers alone, so it can be tested with
    controlled timings. `speed` False (a candidate the request selected): only the held-out ranges decide."""
    if conf.held_out_passed is False:
        missed = "; ".join(f"{n} = {m.value:.6g}, outside {m.range}" for n, m in conf.held_out.items()
                           if not m.passed)
        return f"{winner} is outside a range on the {conf.held_out_samples} held-out samples: {missed}"
    if not speed:
        return None
    if not conf.speedup.beyond_noise(min_gain):
        return (f"{winner} was not confirmed faster than {BASELINE} beyond the noise and by {min_gain:.0%} when "
                f"timed again over {conf.inputs} inputs: {conf.speedup.describe()}")
    if incumbent and conf.vs_incumbent is not None and not conf.vs_incumbent.beyond_noise(min_gain):
        return (f"{winner} was not confirmed faster than the current version beyond the noise and by "
                f"{min_gain:.0%}: {conf.vs_incumbent.describe()}")
    return None


def confirm(checked: CheckedProgram, ref: ReferenceData, evaluation: Evaluation, winner: CandidateResult,
            incumbent: str | None = None, repeats: int = LATENCY_REPEATS,
            log: logging.Logger | logging.LoggerAdapter = _log, device: DeviceUse | None = None) -> Confirmation:
    """The held-out accuracy of `winner` (kiln.optimize.evaluate.evaluate_one on that split), then the
    confirmation rounds (kiln.optimize.evaluate.time_candidates over the evaluation and held-out inputs,
    `repeats` timed calls each), every run in a child process like the evaluation's. NotConfirmed when the
    winner fails there; ModelError when the baseline does."""
    cfg = settings()
    limits = dict(timeout=cfg.candidate_timeout_s, memory_mb=cfg.candidate_memory_limit_mb,
                  timeout_hint="KILN_CANDIDATE_TIMEOUT_S")
    rows = {c.name: c for c in evaluation.candidates}
    built = {b.name: b for b in evaluation.built}
    held_out, passed = {}, None
    if ref.held_out_path:
        try:
            row, _ = run_isolated(evaluate_one, checked, ref, built[winner.name], winner.settings, held_out=True,
                                  device=device if built[winner.name].judge_on_device else None,
                                  what=f"confirming {winner.name}", **limits)
        except IsolationError as exc:
            raise NotConfirmed(f"{winner.name} failed on the held-out samples: {exc.message}") from None
        if failed(row):
            raise NotConfirmed(f"{winner.name} {row.reasons[0]} on the held-out samples")
        held_out, passed = row.metrics, row.passed
    names = [winner.name, BASELINE, *([incumbent] if incumbent else [])]
    timed = time_candidates(checked, [ref.path, *([ref.held_out_path] if ref.held_out_path else [])],
                            [(built[n], rows[n].settings) for n in names], repeats, CONFIRM_SECONDS, limits, log,
                            static_inputs=CONFIRM_INPUTS, what=f"confirming {winner.name}", device=device)
    if BASELINE in timed.failed:
        raise ModelError(f"the unoptimized model does not run in onnxruntime: {timed.failed[BASELINE]}",
                         where=checked.model_path)
    if winner.name in timed.failed:
        raise NotConfirmed(f"{winner.name} {timed.failed[winner.name]} in the confirmation rounds")
    latency = timed.latency_ms
    if incumbent and incumbent in timed.failed:
        log.warning("the current version %s", timed.failed[incumbent])
    conf = Confirmation(inputs=len(timed.traffic.timed), latency_ms=latency,
                        speedup=speedup(latency[BASELINE], latency[winner.name]),
                        vs_incumbent=speedup(latency[incumbent], latency[winner.name])
                        if incumbent in latency else None,
                        held_out_samples=ref.held_out_samples if ref.held_out_path else 0, held_out=held_out,
                        held_out_passed=passed, device_rounds=timed.device_rounds)
    log.info("confirmed over %d inputs, %d calls each: %s %s vs %s%s; held out (%d samples): %s", conf.inputs,
             latency[winner.name].runs or 0, winner.name, conf.speedup.describe(), BASELINE,
             f", {conf.vs_incumbent.describe()} vs the current version" if conf.vs_incumbent else "",
             conf.held_out_samples, {k: m.value for k, m in conf.held_out.items()} or "none")
    return conf
