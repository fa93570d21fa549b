"""Speed-ups that noise cannot fake: candidates timed in interleaved rounds are compared round by round.

On a shared 2-core machine a candidate timed alone once measured 3x faster than an identical one; timed in
alternating rounds they measured the same. The ratio of two candidates' medians within one round cancels
what the machine did meanwhile; the spread of those per-round ratios is the noise, and a bootstrap interval
of their median says what speed-up the measurement supports.
"""

from __future__ import annotations

import numpy as np

from kiln.artifact.manifest import LatencyMs, Speedup

CONFIDENCE = 0.90
RESAMPLES = 2000


def speedup(reference: LatencyMs, candidate: LatencyMs, confidence: float = CONFIDENCE) -> Speedup:
    """How many times faster `candidate` is than `reference`, with a `confidence` interval.

    Paired per-round medians when both were timed in the same rounds; otherwise (one round, or results from
    an older kiln) the ratio of the overall medians, widened to the candidates' own p10-p90 spread."""
    ref, cand = np.asarray(reference.rounds, float), np.asarray(candidate.rounds, float)
    if ref.size >= 2 and ref.size == cand.size and (cand > 0).all():
        ratios = ref / cand
        rng = np.random.default_rng(0)  # deterministic: the same samples give the same decision
        medians = np.median(rng.choice(ratios, size=(RESAMPLES, ratios.size), replace=True), axis=1)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(medians, [tail, 100 - tail])
        return Speedup(value=float(np.median(ratios)), low=float(low), high=float(high))
    value = reference.p50 / candidate.p50
    if reference.p10 is not None and candidate.p10 is not None and candidate.p90 > 0 and candidate.p10 > 0:
        low, high = reference.p10 / candidate.p90, reference.p90 / candidate.p10
        return Speedup(value=value, low=min(low, value), high=max(high, value))
    return Speedup(value=value, low=value, high=value)
