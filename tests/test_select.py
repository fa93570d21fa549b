"""The gate's choice when a version is already in service (reoptimize): it yields only to a clear gain."""

from __future__ import annotations

from kiln.artifact.manifest import CandidateResult, LatencyMs
from kiln.optimize.gate import choose


def cand(name: str, p50: float, passed: bool = True) -> CandidateResult:
    return CandidateResult(name=name, backend="onnxruntime", latency_ms=LatencyMs(p50=p50, p90=p50), passed=passed)


def test_incumbent_kept_within_noise_even_when_the_baseline_measures_faster():
    # the version in service is the baseline model itself: 1 % apart is noise, not a new version
    assert choose([cand("onnxruntime", 1.0), cand("current", 1.01)], "current", 0.02).name == "current"
    assert choose([cand("onnxruntime", 1.0), cand("current", 0.9), cand("tvm", 0.89)], "current", 0.02).name == \
        "current"


def test_incumbent_replaced_by_a_clear_gain_or_when_it_no_longer_passes():
    assert choose([cand("onnxruntime", 1.0), cand("current", 1.5)], "current", 0.02).name == "onnxruntime"
    assert choose([cand("onnxruntime", 1.0), cand("current", 0.9), cand("tvm", 0.5)], "current", 0.02).name == "tvm"
    assert choose([cand("onnxruntime", 1.0), cand("current", 0.5, passed=False)], "current", 0.02).name == \
        "onnxruntime"
