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


def timed(name: str, rounds: list[float], passed: bool = True) -> CandidateResult:
    """A candidate with controlled per-round medians, as interleaved timing reports them."""
    import numpy as np

    lat = LatencyMs(p50=float(np.median(rounds)), p90=max(rounds), p10=min(rounds), rounds=rounds)
    return CandidateResult(name=name, backend="onnxruntime", latency_ms=lat, passed=passed)


def test_an_advantage_inside_the_noise_is_not_taken():
    # the machine's load swings each round by +-30 %; the challenger is 3 % faster on median, but in alternate
    # rounds it is slower: its interval straddles 1.0, so the baseline ships
    base = [10.0, 13.0, 7.0, 12.0, 8.0, 10.0, 13.0, 7.0, 12.0, 8.0]
    noisy = [b * f for b, f in zip(base, [0.9, 1.08, 0.92, 1.05, 0.93, 0.9, 1.08, 0.92, 1.05, 0.93], strict=True)]
    cands = [timed("onnxruntime", base), timed("ort-fp32-basic", noisy)]
    chosen = choose(cands)
    assert chosen.name == "onnxruntime"
    assert cands[1].passed and not cands[1].eligible
    assert cands[1].speedup.low < 1.0 < cands[1].speedup.high
    assert any("beyond the noise" in r for r in cands[1].reasons)


def test_a_consistent_gain_under_load_swings_is_taken_even_when_medians_alone_would_mislead():
    # 20 % faster in every round although the rounds' load swings 2x; its overall p50 is not below every
    # baseline round, but round by round it always wins
    base = [10.0, 20.0, 10.0, 20.0, 10.0, 20.0, 10.0, 20.0]
    cands = [timed("onnxruntime", base), timed("ort-int8-dynamic", [b * 0.8 for b in base])]
    assert choose(cands).name == "ort-int8-dynamic"
    assert cands[1].eligible and cands[1].speedup.low > 1.2


def test_a_gain_below_min_gain_is_not_taken_even_when_consistent():
    base = [10.0] * 8
    cands = [timed("onnxruntime", base), timed("ort-fp32-basic", [9.9] * 8)]  # 1 % faster, every round
    assert choose(cands, min_gain=0.02).name == "onnxruntime"
    assert cands[1].passed and not cands[1].eligible and cands[1].reasons


def test_passed_means_inside_the_ranges_and_eligible_means_it_may_ship():
    cands = [timed("onnxruntime", [10.0] * 6), timed("tvm", [12.0] * 6), timed("ort-int8-dynamic", [5.0] * 6,
                                                                                 passed=False)]
    assert choose(cands).name == "onnxruntime"
    base, slow, wrong = cands
    assert base.passed and base.eligible and not base.reasons
    assert slow.passed and not slow.eligible and "slower than onnxruntime" in slow.reasons[0]
    assert not wrong.passed and not wrong.eligible
    assert slow.speedup.value < 1 < wrong.speedup.value
