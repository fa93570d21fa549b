"""select: the fastest candidate inside every range, never slower than the baseline; else fail with the table."""

from __future__ import annotations

from prefect import task

from kiln import report
from kiln.errors import GateError
from kiln.manifest import CandidateResult
from tasks.models import Evaluation

BASELINE = "onnxruntime"


def choose(candidates: list[CandidateResult]) -> CandidateResult:
    base = next((c for c in candidates if c.name == BASELINE), None)
    for c in candidates:  # a candidate slower than the baseline is not an optimization
        if c.passed and base and base.latency_ms and c.latency_ms and c.latency_ms.p50 > base.latency_ms.p50 \
                and c is not base:
            c.reasons.append(f"slower than {BASELINE} ({c.latency_ms.p50:.3g} > {base.latency_ms.p50:.3g} ms)")
    eligible = [c for c in candidates if c.passed and c.latency_ms and not c.reasons]
    if not eligible:
        raise GateError("no candidate is inside every metric range; nothing was published",
                        report.text(candidates),
                        hint="widen the ranges in program.py if these scores are acceptable, or fix the model")
    return min(eligible, key=lambda c: (c.latency_ms.p50, c.name != BASELINE))


@task(name="select")
def select(evaluation: Evaluation) -> CandidateResult:
    return choose(evaluation.candidates)
