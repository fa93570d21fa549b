"""The gate (kiln.optimize.gate), without Prefect: the fastest candidate inside every range, never slower than
the baseline, and a version in service yields only to a clear gain."""

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


def test_a_candidate_slower_than_the_baseline_is_not_an_optimization():
    cands = [cand("onnxruntime", 1.0), cand("tvm", 1.3), cand("ort-fp32-basic", 0.8)]
    assert choose(cands).name == "ort-fp32-basic"
    assert any("slower than onnxruntime" in r for r in cands[1].reasons)


def test_nothing_inside_the_ranges_fails_with_the_table():
    import pytest

    from kiln.errors import GateError

    with pytest.raises(GateError) as info:
        choose([cand("onnxruntime", 1.0, passed=False), cand("tvm", 0.5, passed=False)])
    assert info.value.exit_code == 1
    assert "onnxruntime" in info.value.table and "tvm" in info.value.table  # the table says what each scored


def test_equal_latency_prefers_the_baseline():
    assert choose([cand("tvm", 1.0), cand("onnxruntime", 1.0)]).name == "onnxruntime"
