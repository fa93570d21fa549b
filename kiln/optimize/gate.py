"""The gate: the fastest candidate inside every range, never slower than the baseline; else fail with the table."""

from __future__ import annotations

from kiln.artifact.manifest import BASELINE, CandidateResult
from kiln.errors import GateError
from kiln.optimize import report


def choose(candidates: list[CandidateResult], incumbent: str | None = None, min_gain: float = 0.0
           ) -> CandidateResult:
    """The fastest eligible candidate; with an `incumbent` (the version in service, measured in the same run),
    a challenger must be faster than it by `min_gain` (a fraction) to replace it, so noise never ships."""
    base = next((c for c in candidates if c.name == BASELINE), None)
    for c in candidates:  # a candidate slower than the baseline is not an optimization
        if c.passed and base and base.latency_ms and c.latency_ms and c.latency_ms.p50 > base.latency_ms.p50 \
                and c is not base and c.name != incumbent:  # the incumbent yields only to a min_gain margin
            c.reasons.append(f"slower than {BASELINE} ({c.latency_ms.p50:.3g} > {base.latency_ms.p50:.3g} ms)")
    eligible = [c for c in candidates if c.passed and c.latency_ms and not c.reasons]
    if not eligible:
        raise GateError("no candidate is inside every metric range; nothing was published",
                        report.text(candidates),
                        hint="widen the ranges in program.py if these scores are acceptable, or fix the model")
    best = min(eligible, key=lambda c: (c.latency_ms.p50, c.name != BASELINE))
    current = next((c for c in eligible if c.name == incumbent), None)
    if current and best is not current and best.latency_ms.p50 > current.latency_ms.p50 * (1 - min_gain):
        best.reasons.append(f"not {min_gain:.0%} faster than the current version "
                            f"({best.latency_ms.p50:.3g} vs {current.latency_ms.p50:.3g} ms)")
        return current
    return best
