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


def bucketed(name: str, rounds: list[float], buckets: dict[str, float]) -> CandidateResult:
    """A candidate timed over inputs of several lengths: per-round medians and each shape bucket's p50."""
    c = timed(name, rounds)
    c.latency_ms.buckets = buckets
    return c


def traffic_of(shares: dict[str, float]):
    from kiln.optimize.traffic import Traffic

    return Traffic(feeds=100, timed=list(range(len(shares))), labels=list(shares), shares=shares)


# onnxruntime's p50 per bucket, and a candidate 20 % faster on average (every round) that is 30 % slower on the
# short inputs and faster on the long ones
BASE_BUCKETS = {"sequence 1-8": 1.0, "sequence 9-16": 2.0, "sequence 17-32": 5.0}
FAST_ON_LONG = {"sequence 1-8": 1.3, "sequence 9-16": 1.5, "sequence 17-32": 3.0}


def test_faster_on_average_but_slower_on_a_tenth_of_the_traffic_does_not_ship():
    base = [10.0, 12.0, 9.0, 11.0, 10.0, 12.0, 9.0, 11.0]
    cands = [bucketed("onnxruntime", base, BASE_BUCKETS),
             bucketed("tvm", [b * 0.8 for b in base], FAST_ON_LONG)]
    traffic = traffic_of({"sequence 1-8": 0.10, "sequence 9-16": 0.45, "sequence 17-32": 0.45})
    assert choose(cands, traffic=traffic).name == "onnxruntime"
    tvm = cands[1]
    assert tvm.passed and not tvm.eligible and tvm.speedup.low > 1.2  # the average alone would have shipped it
    assert tvm.reasons == ["faster on average (" + tvm.speedup.describe() + ") but slower than onnxruntime on "
                           "sequence 1-8 (10% of the traffic): p50 1.3 ms vs 1 ms"], tvm.reasons


def test_a_slower_bucket_under_a_tenth_of_the_traffic_or_within_the_tolerance_does_not_block():
    base = [10.0, 12.0, 9.0, 11.0, 10.0, 12.0, 9.0, 11.0]
    rare = [bucketed("onnxruntime", base, BASE_BUCKETS), bucketed("tvm", [b * 0.8 for b in base], FAST_ON_LONG)]
    assert choose(rare, traffic=traffic_of({"sequence 1-8": 0.09, "sequence 9-16": 0.46,
                                            "sequence 17-32": 0.45})).name == "tvm"
    assert rare[1].eligible and not rare[1].reasons
    # 4 % slower on half the traffic: per-bucket medians are noisier than the whole, 5 % is within it
    close = [bucketed("onnxruntime", base, BASE_BUCKETS),
             bucketed("tvm", [b * 0.8 for b in base], {**FAST_ON_LONG, "sequence 1-8": 1.04})]
    assert choose(close, traffic=traffic_of({"sequence 1-8": 0.5, "sequence 9-16": 0.25,
                                             "sequence 17-32": 0.25})).name == "tvm"
