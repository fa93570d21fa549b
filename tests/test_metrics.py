import numpy as np
import pytest
from pydantic import ValidationError

from kiln import metrics
from kiln.program.metrics import Range


def test_absolute_and_relative_ranges():
    r = Range(at_least=0.9)
    assert r.check(0.95, None, True) and not r.check(0.85, None, True)
    rel = Range(max_degradation=0.01)  # at most 1 % worse than the reference
    assert rel.check(0.99, 1.0, True) and not rel.check(0.98, 1.0, True)
    assert rel.check(1.01, 1.0, False) and not rel.check(1.02, 1.0, False)  # lower is better (errors)
    assert not Range(at_most=1.0).check(float("nan"), None, False)
    assert "max degradation 1 %" in rel.describe(1.0, True) and ">= 0.99" in rel.describe(1.0, True)


def test_empty_range_is_refused():
    with pytest.raises(ValidationError):
        Range()


def test_metric_values():
    ref = {"p": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])}
    out = {"p": np.array([[0.2, 0.8], [0.4, 0.6], [0.6, 0.4]])}
    labels = np.array([1, 0, 1])
    assert metrics.top1(at_least=0).compute(ref, ref, labels) == 1.0
    assert metrics.top1(at_least=0).compute(out, ref, labels) == pytest.approx(1 / 3)
    assert metrics.topk(2, at_least=0).compute(out, ref, labels) == 1.0
    assert metrics.agreement(at_least=0).compute(out, ref, None) == pytest.approx(1 / 3)
    assert metrics.max_abs_diff(at_most=1).compute(out, ref, None) == pytest.approx(0.4)
    assert metrics.max_rel_diff(at_most=1).compute(out, ref, None) == pytest.approx(0.4 / 0.9)
    assert metrics.cosine(at_least=0).compute(ref, ref, None) == pytest.approx(1.0)
    assert metrics.cosine(at_least=0).compute(out, ref, None) < 0.99
    zeros = {"p": np.zeros((3, 2))}  # an all-zero output (a broken int8 model) has no direction: no agreement
    assert metrics.cosine(at_least=0).compute(zeros, ref, None) == 0.0
    assert metrics.cosine(at_least=0).compute(zeros, zeros, None) == 1.0
    empty = {"p": np.zeros((3, 0))}  # a model may legitimately output an empty tensor (the node suite has some)
    assert metrics.max_rel_diff(at_most=0).compute(empty, empty, None) == 0.0
    assert metrics.max_abs_diff(at_most=0).compute(empty, empty, None) == 0.0
    reg = {"y": np.array([1.0, 2.0, 4.0])}
    assert metrics.mae(at_most=1).compute(reg, reg, np.array([1.0, 2.0, 3.0])) == pytest.approx(1 / 3)
    assert metrics.rmse(at_most=1).compute(reg, reg, np.array([1.0, 2.0, 3.0])) == pytest.approx(np.sqrt(1 / 3))
    custom = metrics.custom(lambda o, labels: float(o["p"].sum()), name="total", at_most=10)
    assert custom.compute(ref, ref, labels) == pytest.approx(3.0)


def test_agreement_per_position_pools_every_position_and_names_the_worst_sample():
    """agreement[axis=-1] on [1, T, C] outputs (stacked per sample: [N, 1, T, C]): the share of time steps whose
    class matches the reference's, pooled over all samples, the worst sample beside it; the same on samples of
    their own lengths (ragged); a NaN where the reference has a number disagrees at that position only."""
    from kiln.optimize.scoring import WORST, compute_metrics, score
    from kiln.program import ragged

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 1, 10, 5))
    out = ref.copy()
    out[0, 0, 3:5] = -ref[0, 0, 3:5]  # two steps of sample 0 flip their arg-max (5 classes: the max is unique)
    m = metrics.agreement(at_least=0.99, axis=-1)
    assert m.name == "agreement[axis=-1]"
    assert m.compute({"y": out}, {"y": ref}, None) == pytest.approx(38 / 40)  # not 3/4 of the samples
    assert m.worst_sample({"y": out}, {"y": ref}) == pytest.approx(0.8)
    assert metrics.agreement(at_least=0.99).compute({"y": out}, {"y": ref}, None) == 1.0  # whole-sample arg-max
    uneven_out, uneven_ref = ragged.of([out[0], out[1][:, :7]]), ragged.of([ref[0], ref[1][:, :7]])
    assert m.compute({"y": uneven_out}, {"y": uneven_ref}, None) == pytest.approx(15 / 17)
    nan = out.copy()
    nan[2, 0, 0, 0] = np.nan
    assert m.compute({"y": nan}, {"y": ref}, None) == pytest.approx(37 / 40)
    values = compute_metrics([m], {"y": out}, {"y": ref}, None, where="t")
    results, reasons = score([m], values, {})
    assert values[m.name + WORST] == pytest.approx(0.8) and results[m.name].worst_sample == pytest.approx(0.8)
    assert reasons == ["agreement[axis=-1] = 0.95 (worst sample 0.8), outside >= 0.99"]
    with pytest.raises(ValueError, match="its samples have 3 axes; count the axis from the end"):
        metrics.agreement(at_least=0.5, axis=-4).compute({"y": out}, {"y": ref}, None)


def test_per_position_range_syntax():
    from kiln.program.metrics import parse_range, source

    m = parse_range("agreement[axis=-1]>=0.99")
    assert (m.name, m.kind, m.axis, m.output, m.range.at_least) == ("agreement[axis=-1]", "agreement", -1, None, 0.99)
    named = parse_range("agreement[ logits , axis=-2 ]>=0.9")
    assert (named.name, named.output, named.axis) == ("agreement[logits, axis=-2]", "logits", -2)
    assert source(named) == ("kiln.metrics.agreement(at_least=0.9, output='logits', axis=-2, "
                             "name='agreement[logits, axis=-2]')")
    assert parse_range("cosine[last_hidden_state]>=0.99").output == "last_hidden_state"  # as before
    for text, said in [("agreement[axis=2]>=0.9", "count the axis from the end"),
                       ("cosine[axis=-1]>=0.9", "axis= is for agreement only"),
                       ("agreement[a, b]>=0.9", "two outputs named"),
                       ("agreement[foo=2]>=0.9", "cannot read 'foo=2'")]:
        with pytest.raises(ValueError, match=said):
            parse_range(text)
    with pytest.raises(ValidationError, match="count the axis from the end"):
        metrics.agreement(at_least=0.9, axis=1)


def test_unknown_output_is_named():
    m = metrics.top1(at_least=0.5, output="nope")
    with pytest.raises(KeyError, match="nope"):
        m.compute({"p": np.zeros((1, 2))}, {"p": np.zeros((1, 2))}, np.zeros(1))


def test_impossible_range_is_refused_when_declared():
    with pytest.raises(ValidationError, match="at_least 0.9 is above at_most 0.5: no value can pass"):
        metrics.custom(lambda o: 1.0, name="x", at_least=0.9, at_most=0.5)
    assert Range(at_least=0.5, at_most=0.5).check(0.5, None, True)  # a point is a valid range


def test_matching_nonfinite_values_agree_and_others_do_not():
    """NaN/Inf where the reference has the very same value is agreement (a program that allows non-finite
    outputs must not fail the baseline on them); a NaN or Inf where the reference is finite is a failure."""
    ref = {"y": np.array([[0.3, np.nan, -np.inf, 0.9], [0.5, 0.2, np.inf, 0.1]])}
    same = {"y": ref["y"].copy()}
    close = {"y": ref["y"] + np.array([[1e-6, 0, 0, 0], [0, 0, 0, 0]])}
    nan_where_finite = {"y": np.array([[0.3, np.nan, -np.inf, np.nan], [0.5, 0.2, np.inf, 0.1]])}
    finite_where_nan = {"y": np.array([[0.3, 0.0, -np.inf, 0.9], [0.5, 0.2, np.inf, 0.1]])}
    wrong_infinity = {"y": np.array([[0.3, np.nan, np.inf, 0.9], [0.5, 0.2, np.inf, 0.1]])}
    checks = [metrics.max_abs_diff(at_most=1e-3), metrics.max_rel_diff(at_most=1e-3), metrics.cosine(at_least=0.999),
              metrics.agreement(at_least=1.0)]
    for m in checks:
        for outputs in (same, close):
            value = m.compute(outputs, ref, None)
            assert m.range.check(value, None, m.higher_is_better), (m.name, value)
        for outputs in (nan_where_finite, finite_where_nan, wrong_infinity):
            value = m.compute(outputs, ref, None)
            assert not m.range.check(value, None, m.higher_is_better), (m.name, value)
    assert metrics.max_abs_diff(at_most=1).compute(same, ref, None) == 0.0
    assert metrics.max_abs_diff(at_most=1).compute(nan_where_finite, ref, None) == np.inf  # not NaN: as far as can be
    # a masked -inf score must not win the arg-max on both sides and hide a real disagreement
    scores = {"y": np.array([[-np.inf, 0.1, 0.9]])}
    assert metrics.agreement(at_least=1).compute({"y": np.array([[-np.inf, 0.9, 0.1]])}, scores, None) == 0.0
