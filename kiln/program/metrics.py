"""Metrics with acceptable ranges: the gate every candidate must pass before it may be published.

A metric is computed on a candidate's outputs for the evaluation dataset, against the dataset's labels or
against the reference (unoptimized, onnxruntime) outputs. Its `Range` is absolute (`at_least`/`at_most`)
or relative to what the reference model scored (`max_degradation`, a fraction: 0.005 = 0.5 %).

The metrics that compare with the reference take NaN/Inf where the reference has the very same value (NaN for
NaN, +Inf for +Inf) as agreement: a program that allows non-finite outputs (a masked score of -Inf, a NaN the
model is meant to give) must not fail every candidate, the baseline included, on them. A non-finite value
where the reference has another value is as far off as can be.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln.errors import ProgramError
from kiln.program import ragged

Outputs = dict[str, np.ndarray]


class Range(BaseModel):
    """Acceptable values of one metric."""

    at_least: float | None = None
    at_most: float | None = None
    max_degradation: float | None = Field(
        default=None, ge=0, description="largest allowed worsening relative to the reference, as a fraction"
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Range:
        if self.at_least is None and self.at_most is None and self.max_degradation is None:
            raise ValueError("a range needs at_least, at_most or max_degradation")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"at_least {self.at_least:g} is above at_most {self.at_most:g}: no value can pass")
        return self

    def check(self, value: float, reference: float | None, higher_is_better: bool) -> bool:
        if not np.isfinite(value):
            return False
        if self.at_least is not None and value < self.at_least:
            return False
        if self.at_most is not None and value > self.at_most:
            return False
        if self.max_degradation is not None and reference is not None:
            slack = abs(reference) * self.max_degradation
            if higher_is_better and value < reference - slack - 1e-12:
                return False
            if not higher_is_better and value > reference + slack + 1e-12:
                return False
        return True

    def describe(self, reference: float | None = None, higher_is_better: bool = True) -> str:
        parts = []
        if self.at_least is not None:
            parts.append(f">= {self.at_least:g}")
        if self.at_most is not None:
            parts.append(f"<= {self.at_most:g}")
        if self.max_degradation is not None:
            text = f"max degradation {self.max_degradation * 100:g} %"
            if reference is not None:
                slack = abs(reference) * self.max_degradation
                bound = reference - slack if higher_is_better else reference + slack
                text += f" ({'>=' if higher_is_better else '<='} {bound:.6g})"
            parts.append(text)
        return ", ".join(parts)


Kind = Literal["topk", "mae", "rmse", "max_abs_diff", "max_rel_diff", "cosine", "agreement", "custom"]
_NEEDS_LABELS = {"topk", "mae", "rmse"}
_HIGHER_IS_BETTER = {"topk": True, "mae": False, "rmse": False, "max_abs_diff": False, "max_rel_diff": False,
                     "cosine": True, "agreement": True}


class Metric(BaseModel):
    """One measured quantity and its acceptable range."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    kind: Kind
    range: Range
    output: str | None = Field(default=None, description="model output to score; default: the first")
    k: int = 1
    axis: int | None = Field(default=None, description="agreement per position: the arg-max over this axis of "
                             "the output (CTC time steps, tokens, pixels) instead of over the whole sample")
    higher_is_better: bool = True
    fn: Callable[..., float] | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _axis(self) -> Metric:
        if self.axis is not None and self.kind != "agreement":
            raise ValueError(f"axis= is for agreement per position, not {self.kind}")
        if self.axis is not None and self.axis >= 0:
            raise ValueError(f"axis={self.axis}: count the axis from the end (axis=-1 for the last), since a "
                             "sample's outputs may carry the batch axis or not")
        return self

    @property
    def needs_labels(self) -> bool:
        return self.kind in _NEEDS_LABELS

    @property
    def compares_to_reference(self) -> bool:
        return self.kind in {"max_abs_diff", "max_rel_diff", "cosine", "agreement"}

    def compute(self, outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        name = self.output or next(iter(outputs))
        if name not in outputs:
            raise KeyError(f"metric {self.name!r} scores output {name!r}, but the model's outputs are "
                           f"{sorted(outputs)}")
        if self.kind == "custom":  # ragged outputs reach it as object arrays of per-sample arrays
            assert self.fn is not None
            params = inspect.signature(self.fn).parameters
            args: list[Any] = [outputs, labels, reference][: max(1, len(params))]
            return float(self.fn(*args))
        if ragged.is_ragged(outputs[name]) or ragged.is_ragged(reference.get(name)):
            return self._per_sample(name, outputs[name], reference[name], labels)
        out = np.asarray(outputs[name], dtype=np.float64)
        ref = np.asarray(reference[name], dtype=np.float64)
        if self.kind == "agreement" and self.axis is not None:
            shares = self.position_shares(name, out, ref)
            return float(shares.sum() / shares.size) if shares.size else 1.0
        if self.compares_to_reference:
            # equal non-finite values are left out of the comparison (for arg-max: never the largest); `stray`
            # marks the samples with a NaN/Inf that the other side does not have
            out, ref, stray = _set_aside_matching_nonfinite(out, ref, -np.inf if self.kind == "agreement" else 0.0)
        if self.kind == "topk":
            assert labels is not None
            top = np.argsort(-out.reshape(len(out), -1), axis=1)[:, : self.k]
            return float(np.mean([lab in row for lab, row in zip(labels.reshape(-1), top, strict=True)]))
        if self.kind in ("mae", "rmse"):
            assert labels is not None
            diff = out.reshape(labels.shape) - labels if out.size == labels.size else out - labels
            return float(np.mean(np.abs(diff)) if self.kind == "mae" else np.sqrt(np.mean(diff**2)))
        if self.kind == "max_abs_diff":
            return float(np.max(_abs_diff(out, ref))) if out.size else 0.0
        if self.kind == "max_rel_diff":
            if not out.size:  # an empty output: nothing to differ on
                return 0.0
            finite = np.abs(ref[np.isfinite(ref)])
            scale = float(np.max(finite)) if finite.size else 0.0
            return float(np.max(_abs_diff(out, ref)) / (scale or 1.0))
        if self.kind == "cosine":
            a, b = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
            denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            same = np.all(a == b, axis=1)
            # a zero vector has no direction: it agrees only with another zero vector (an int8 model that
            # outputs all zeros must not score 1.0)
            with np.errstate(invalid="ignore"):
                cos = np.where(denom > 0, np.sum(a * b, axis=1) / np.where(denom > 0, denom, 1), 0.0)
            return float(np.min(np.where(same, 1.0, np.where(stray, 0.0, cos))))
        if self.kind == "agreement":
            if out.size == 0:  # an empty output: nothing to disagree on
                return 1.0
            a, b = out.reshape(len(out), -1).argmax(1), ref.reshape(len(ref), -1).argmax(1)
            return float(np.mean((a == b) & ~stray))
        raise ValueError(f"unknown metric kind {self.kind}")

    def position_shares(self, name: str, out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Per-position agreement: for each sample (first axis) and each position (every other axis but
        `axis`), whether the arg-max over `axis` matches the reference's; an array [samples, positions] of 0/1.
        A NaN/Inf at a position that the reference does not have there disagrees."""
        if out.shape != ref.shape:
            raise ValueError(f"output {name!r} has shape {list(out.shape)} but the reference has {list(ref.shape)}")
        assert self.axis is not None
        if not -out.ndim < self.axis < 0:
            raise ValueError(f"axis {self.axis} of output {name!r}: its samples have {out.ndim - 1} axes; count "
                             "the axis from the end, e.g. axis=-1 for the classes of each position")
        axis = self.axis % out.ndim
        same = (np.isnan(out) & np.isnan(ref)) | (np.isinf(out) & (out == ref))
        stray = ((~np.isfinite(out) | ~np.isfinite(ref)) & ~same).any(axis=axis)
        out, ref = np.where(same, -np.inf, out), np.where(same, -np.inf, ref)
        agree = (out.argmax(axis) == ref.argmax(axis)) & ~stray
        return agree.reshape(len(agree), -1).astype(np.float64)

    def worst_sample(self, outputs: Outputs, reference: Outputs) -> float | None:
        """Per-position agreement's worst sample: the smallest share of its positions that agree (None for
        every other metric)."""
        if self.kind != "agreement" or self.axis is None:
            return None
        name = self.output or next(iter(outputs))
        outs, refs = ragged.samples(outputs[name]), ragged.samples(reference[name])
        shares = [self.position_shares(name, np.asarray(o, np.float64)[None], np.asarray(r, np.float64)[None])
                  for o, r in zip(outs, refs, strict=True)]
        return min(float(s.mean()) if s.size else 1.0 for s in shares) if shares else None

    def _per_sample(self, name: str, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
        """The metric over samples of their own shapes: computed on each sample alone, then combined as the
        metric combines samples (the worst cosine, the largest difference, the share that agrees, the mean
        error over every value)."""
        outs, refs = ragged.samples(outputs), ragged.samples(reference)
        if len(outs) != len(refs):
            raise ValueError(f"{len(outs)} samples of output {name!r}, but {len(refs)} in the reference")
        one = [(o[None], r[None], None if labels is None else labels[i : i + 1])
               for i, (o, r) in enumerate(zip(outs, refs, strict=True))]
        values = np.array([self.compute({name: o}, {name: r}, lab) for o, r, lab in one])
        sizes = np.array([o.size for o in outs], dtype=np.float64)
        if self.kind == "cosine":
            return float(values.min())
        if self.kind == "max_abs_diff":
            return float(values.max())
        if self.kind == "max_rel_diff":
            scales = [float(np.max(np.abs(r[np.isfinite(r)]))) if np.isfinite(r).any() else 0.0 for r in refs]
            diffs = values * np.array([s or 1.0 for s in scales])
            return float(diffs.max() / (max(scales) or 1.0))
        if self.kind == "mae":
            return float(np.sum(values * sizes) / sizes.sum())
        if self.kind == "rmse":
            return float(np.sqrt(np.sum(values**2 * sizes) / sizes.sum()))
        if self.kind == "agreement" and self.axis is not None:  # pooled over the positions of every sample
            positions = np.array([o.size // o.shape[self.axis] if o.ndim >= -self.axis and o.shape[self.axis]
                                  else 0 for o in outs], dtype=np.float64)
            return float(np.sum(values * positions) / positions.sum()) if positions.sum() else 1.0
        return float(values.mean())  # agreement, topk: the share of samples


def _set_aside_matching_nonfinite(out: np.ndarray, ref: np.ndarray, fill: float
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(out, ref, stray): `fill` on both sides where both hold the same non-finite value (NaN and NaN, or the
    same infinity), so those places agree instead of turning the whole comparison into NaN; `stray` says per
    sample (first axis) whether one side still holds a NaN/Inf the other does not have there, which arg-max and
    cosine could look past although the sample does not agree."""
    if out.shape != ref.shape or not out.ndim:
        return out, ref, np.zeros(len(out) if out.ndim else 1, dtype=bool)
    same = (np.isnan(out) & np.isnan(ref)) | (np.isinf(out) & (out == ref))
    stray = ((~np.isfinite(out) | ~np.isfinite(ref)) & ~same).reshape(len(out), -1).any(axis=1)
    if same.any():
        out, ref = np.where(same, fill, out), np.where(same, fill, ref)
    return out, ref, stray


def _abs_diff(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|out - ref|, infinite where exactly one side is NaN: NaN would compare as neither large nor small."""
    diff = np.abs(out - ref)
    return np.where(np.isnan(diff), np.inf, diff)


def _metric(kind: str, name: str, output: str | None, k: int = 1, axis: int | None = None,
            **bounds: float | None) -> Metric:
    return Metric(name=name, kind=kind, output=output, k=k, axis=axis, range=Range(**bounds),
                  higher_is_better=_HIGHER_IS_BETTER[kind])


def top1(*, at_least: float | None = None, max_degradation: float | None = None,
         output: str | None = None, name: str = "top1") -> Metric:
    """Fraction of samples whose arg-max equals the label."""
    return _metric("topk", name, output, 1, at_least=at_least, max_degradation=max_degradation)


def topk(k: int, *, at_least: float | None = None, max_degradation: float | None = None,
         output: str | None = None, name: str | None = None) -> Metric:
    """Fraction of samples whose label is among the k highest scores."""
    return _metric("topk", name or f"top{k}", output, k, at_least=at_least, max_degradation=max_degradation)


def mae(*, at_most: float | None = None, max_degradation: float | None = None,
        output: str | None = None, name: str = "mae") -> Metric:
    """Mean absolute error against the labels (regression)."""
    return _metric("mae", name, output, at_most=at_most, max_degradation=max_degradation)


def rmse(*, at_most: float | None = None, max_degradation: float | None = None,
         output: str | None = None, name: str = "rmse") -> Metric:
    """Root mean squared error against the labels (regression)."""
    return _metric("rmse", name, output, at_most=at_most, max_degradation=max_degradation)


def max_abs_diff(*, at_most: float, output: str | None = None, name: str = "max_abs_diff") -> Metric:
    """Largest absolute difference from the reference model's outputs."""
    return _metric("max_abs_diff", name, output, at_most=at_most)


def max_rel_diff(*, at_most: float, output: str | None = None, name: str = "max_rel_diff") -> Metric:
    """Largest absolute difference from the reference, divided by the reference's largest magnitude."""
    return _metric("max_rel_diff", name, output, at_most=at_most)


def cosine(*, at_least: float, output: str | None = None, name: str = "cosine") -> Metric:
    """Smallest per-sample cosine similarity with the reference model's outputs."""
    return _metric("cosine", name, output, at_least=at_least)


def agreement(*, at_least: float, output: str | None = None, axis: int | None = None,
              name: str | None = None) -> Metric:
    """Fraction of samples whose arg-max equals the reference model's arg-max; with `axis` (from the end, e.g.
    -1), fraction of positions whose arg-max over that axis does (a CTC recognizer's character per time step, a
    token classifier's label per token, a segmenter's class per pixel), pooled over every position of every
    sample; the worst sample's share is reported beside it."""
    if name is None:
        name = "agreement" if axis is None else f"agreement[{output + ', ' if output else ''}axis={axis}]"
    return _metric("agreement", name, output, axis=axis, at_least=at_least)


def custom(fn: Callable[..., float], *, name: str, higher_is_better: bool = True,
           at_least: float | None = None, at_most: float | None = None,
           max_degradation: float | None = None) -> Metric:
    """A user callable `fn(outputs[, labels[, reference_outputs]]) -> float`."""
    return Metric(name=name, kind="custom", fn=fn, higher_is_better=higher_is_better,
                  range=Range(at_least=at_least, at_most=at_most, max_degradation=max_degradation))


def default_metrics() -> list[Metric]:
    """Agreement with onnxruntime: what a bare .onnx is held to."""
    return [max_rel_diff(at_most=1e-3), cosine(at_least=0.9999)]


_RANGE_RE = re.compile(r"^\s*([a-z_]+?)(\d+)?\s*(?:\[\s*([^\]]+?)\s*\])?\s*(>=|<=)\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*$",
                       re.IGNORECASE)
RANGE_METRICS = ("cosine", "agreement", "max_abs_diff", "max_rel_diff", "top1", "topK", "mae", "rmse")


def parse_range(text: str) -> Metric:
    """A metric from `NAME>=VALUE` or `NAME<=VALUE` (the CLI's --range, the form's ranges field).

    NAME is a built-in metric (cosine, agreement, max_abs_diff, max_rel_diff, top1/top5/topK, mae, rmse),
    optionally with the output it scores in brackets: `cosine[last_hidden_state]>=0.99`; agreement per position
    names its axis there too: `agreement[axis=-1]>=0.99`, `agreement[logits, axis=-1]>=0.99`."""
    match = _RANGE_RE.match(text)
    hint = f"write NAME>=VALUE or NAME<=VALUE, e.g. 'cosine>=0.99'; NAME is one of {', '.join(RANGE_METRICS)}"
    if not match:
        raise ValueError(f"cannot read range {text!r}; {hint}")
    base, k, inside, op, raw = match.groups()
    base = base.lower()
    kind = "topk" if base == "top" and k else base if not k else None
    if kind not in _HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {base + (k or '')!r} in range {text!r}; {hint}")
    output, axis = _bracket(inside, kind, text)
    value = float(raw)
    higher = _HIGHER_IS_BETTER[kind]
    if higher != (op == ">="):
        raise ValueError(f"{base + (k or '')} is {'higher' if higher else 'lower'} is better: a bound on it is "
                         f"'{base + (k or '')}{'>=' if higher else '<='}{raw}', not {text!r}")
    parts = [p for p in (output, None if axis is None else f"axis={axis}") if p]
    name = base + (k or "") + (f"[{', '.join(parts)}]" if parts else "")
    return _metric(kind, name, output, int(k or 1), axis=axis, **{"at_least" if higher else "at_most": value})


def _bracket(inside: str | None, kind: str, text: str) -> tuple[str | None, int | None]:
    """(output, axis) from what a range's brackets hold: `OUTPUT`, `axis=N`, or `OUTPUT, axis=N`."""
    output, axis = None, None
    for part in (p.strip() for p in (inside or "").split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if not eq:
            if output is not None:
                raise ValueError(f"two outputs named in range {text!r}; a metric scores one output")
            output = part
        elif key.strip() == "axis" and kind == "agreement" and re.fullmatch(r"\s*-\d+\s*", value):
            axis = int(value)
        elif key.strip() == "axis" and kind == "agreement":
            raise ValueError(f"axis={value.strip()} in range {text!r}: count the axis from the end, e.g. "
                             "'agreement[axis=-1]>=0.99' for the classes of each position")
        else:
            raise ValueError(f"cannot read {part!r} in range {text!r}: brackets hold the output to score"
                             + (" and axis=-N (agreement per position over that axis)" if kind == "agreement"
                                else "; axis= is for agreement only"))
    return output, axis


def parse_ranges(texts: list[str]) -> list:
    """Each `NAME>=VALUE` as a Metric; the first that cannot be read is a ProgramError naming it."""
    metrics = []
    for text in texts:
        try:
            metrics.append(parse_range(text))
        except ValueError as exc:
            raise ProgramError(str(exc), where="--range") from None
    names = [m.name for m in metrics]
    if len(set(names)) < len(names):
        raise ProgramError(f"a metric is bounded twice: {names}", where="--range",
                           hint="give each metric one bound")
    return metrics


def source(metric: Metric) -> str:
    """The Python that builds `metric` in a program.py (for the programs kiln writes for bare models)."""
    bound = ", ".join(f"{k}={v!r}" for k, v in metric.range.model_dump(exclude_none=True).items())
    output = f", output={metric.output!r}" if metric.output else ""
    output += f", axis={metric.axis}" if metric.axis is not None else ""
    name = f", name={metric.name!r}"
    if metric.kind == "topk":
        return f"kiln.metrics.topk({metric.k}, {bound}{output}{name})"
    return f"kiln.metrics.{metric.kind}({bound}{output}{name})"
