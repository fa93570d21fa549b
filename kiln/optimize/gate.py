"""The gate: the fastest candidate inside every range that is faster than the baseline beyond the noise of
the measurement; else fail with the table.

`passed` means inside every range; `eligible` means passed and faster than the baseline by more than the
noise and by `min_gain` (the baseline itself is eligible when it passed). With an incumbent (the version in
service, measured in the same run) the winner must beat it by the same rule, or the incumbent stays.
"""

from __future__ import annotations

from kiln.artifact.manifest import BASELINE, CandidateResult
from kiln.cpu import u8s8_exact
from kiln.errors import GateError
from kiln.optimize import report
from kiln.optimize.defaults import MIN_GAIN
from kiln.optimize.noise import speedup
from kiln.optimize.traffic import Traffic, slower_buckets


def _judge(c: CandidateResult, base: CandidateResult | None, incumbent: str | None, min_gain: float,
           traffic: Traffic | None = None) -> None:
    """Set `c.speedup` and `c.eligible`; add the reason when it passed but may not ship."""
    if base and base.latency_ms and c.latency_ms:
        c.speedup = speedup(base.latency_ms, c.latency_ms)
    c.eligible = False
    isa = c.settings.int8_isa
    if not c.passed and isa and not u8s8_exact(isa):
        c.reasons.append(f"int8 for {isa}: no VNNI, so uint8 weights (U8U8) to stay exact")
    if not c.passed or not c.latency_ms:
        return
    if c is base or c.name == incumbent:  # the incumbent is judged against the winner, below
        c.eligible = True
        return
    if c.speedup is None:
        c.reasons.append(f"{BASELINE} was not timed")
    elif c.speedup.beyond_noise(min_gain):
        slow = slower_buckets(c.latency_ms.buckets, base.latency_ms.buckets, traffic) if traffic and base else []
        if slow:
            c.reasons.append(f"faster on average ({c.speedup.describe()}) but slower than {BASELINE} on "
                             f"{'; '.join(slow)}")
        c.eligible = not slow
    elif c.speedup.value < 1.0:
        c.reasons.append(f"slower than {BASELINE}: {c.speedup.describe()}")
    else:
        c.reasons.append(f"not faster than {BASELINE} beyond the noise and by {min_gain:.0%}: "
                         f"{c.speedup.describe()}")


def selected(candidates: list[CandidateResult], name: str) -> CandidateResult:
    """The candidate the request named (--select), when it was measured and is inside every range."""
    pick = next((c for c in candidates if c.name == name), None)
    if pick is None or not pick.passed or not pick.latency_ms:
        why = "was not built" if pick is None else "; ".join(pick.reasons) or "is outside a range"
        raise GateError(f"the selected candidate {name} cannot ship: {why}; nothing was published",
                        report.text(candidates), hint="--select a candidate inside every range, or leave it out")
    fastest = max((c for c in candidates if c.eligible), key=lambda c: c.speedup.value if c.speedup else 1.0,
                  default=None)
    note = f"chosen by --select ({pick.speedup.describe() if pick.speedup else 'the baseline'})"
    if fastest is not None and fastest is not pick:
        note += f"; the fastest inside every range was {fastest.name}"
    pick.reasons.append(note)
    return pick


def base_p50(base: CandidateResult | None) -> float:
    return base.latency_ms.p50 if base and base.latency_ms else 1.0


def choose(candidates: list[CandidateResult], incumbent: str | None = None, min_gain: float = MIN_GAIN,
           traffic: Traffic | None = None, select: str | None = None) -> CandidateResult:
    """The fastest eligible candidate, or the `incumbent` when no eligible one beats it beyond noise and by
    `min_gain`: a re-run with unchanged inputs ships nothing new. `select`: that candidate, fastest or not, when it
    is inside every range."""
    base = next((c for c in candidates if c.name == BASELINE), None)
    for c in candidates:
        _judge(c, base, incumbent, min_gain, traffic)
    if select:
        return selected(candidates, select)
    eligible = [c for c in candidates if c.eligible]
    if not eligible:
        if any(c.passed for c in candidates):  # only when the baseline itself is outside a range
            raise GateError(f"no candidate is both inside every metric range and faster than {BASELINE}; "
                            "nothing was published", report.text(candidates),
                            hint=f"{BASELINE} (the unchanged model) is outside a range: check the ranges and data")
        raise GateError("no candidate is inside every metric range; nothing was published",
                        report.text(candidates),
                        hint="widen the ranges in program.py if these scores are acceptable, or fix the model")
    # the largest paired speed-up (the per-round ratio the table shows; overall p50s of candidates timed in
    # different moments of the rounds can disagree with it); on a tie, the baseline
    best = max(eligible, key=lambda c: (c.speedup.value if c.speedup else base_p50(base) / c.latency_ms.p50,
                                        c.name == BASELINE))
    current = next((c for c in eligible if c.name == incumbent), None)
    if current and best is not current:
        gain = speedup(current.latency_ms, best.latency_ms)
        if not gain.beyond_noise(min_gain):
            best.reasons.append(f"not faster than the current version beyond the noise and by {min_gain:.0%}: "
                                f"{gain.describe()}")
            return current
    return best
