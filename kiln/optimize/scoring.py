"""Metrics computed on a candidate's outputs and checked against their ranges."""

from __future__ import annotations

import numpy as np

from kiln.artifact.manifest import MetricResult
from kiln.errors import ProgramError
from kiln.program.metrics import Metric

Outputs = dict[str, np.ndarray]
WORST = " worst sample"  # the key, after the metric's name, of a per-position metric's worst sample


def compute_metrics(metrics: list[Metric], outputs: Outputs, reference: Outputs, labels: np.ndarray | None,
                    where: str) -> dict[str, float]:
    """Each metric's value (a per-position metric's worst sample too, under its name + WORST); a metric that
    raises (user callables, mismatched outputs) is explained, not fatal."""
    values = {}
    for m in metrics:
        try:
            values[m.name] = m.compute(outputs, reference, labels)
            worst = m.worst_sample(outputs, reference)
            if worst is not None:
                values[m.name + WORST] = worst
        except Exception as exc:
            raise ProgramError(f"metric {m.name!r} raised {type(exc).__name__}: {exc}", where=where) from None
    return values


def score(metrics: list[Metric], values: dict[str, float], reference: dict[str, float]
          ) -> tuple[dict[str, MetricResult], list[str]]:
    """(result per metric, a reason for each range missed); relative ranges resolve against `reference`."""
    results, reasons = {}, []
    for m in metrics:
        ok = m.range.check(values[m.name], reference.get(m.name), m.higher_is_better)
        desc = m.range.describe(reference.get(m.name), m.higher_is_better)
        worst = values.get(m.name + WORST)
        results[m.name] = MetricResult(value=values[m.name], range=desc, passed=ok, worst_sample=worst)
        if not ok:
            beside = f" (worst sample {worst:.6g})" if worst is not None else ""
            reasons.append(f"{m.name} = {values[m.name]:.6g}{beside}, outside {desc}")
    return results, reasons
