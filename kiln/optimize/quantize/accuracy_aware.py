"""Accuracy-aware int8: keep the few nodes that hurt accuracy in fp32, not the whole model.

The idea of NNCF's and Intel Neural Compressor's accuracy-aware quantization: quantize everything; if a
range of the program fails, rank the quantized nodes by the error each one adds, keep the worst in fp32 and
quantize again, doubling how many are kept, until every range passes or the budget (`max_fallback_rounds`,
`fallback_seconds`) runs out. Every attempt becomes its own candidate row, so the gate picks among them on
the evaluation split like among any candidates.

Every decision here (the ranking, whether a range passes) is made on the calibration split, never on the
evaluation split, so the gate's verdict stays an honest one.

The ranking: both models run on calibration feeds with every intermediate tensor they share exposed; a
node's score is the relative error at its output minus the largest relative error at its inputs, i.e. the
error it adds rather than the error it inherits from upstream. For models with few quantized nodes (up to
IMPACT_RANKING_NODES, as transformers' MatMuls are) each node is then measured on its own: everything but
it quantized, and how close the calibration split comes to its ranges.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from kiln.artifact.manifest import RunSettings
from kiln.optimize.build_context import BuildContext, Built
from kiln.program import ragged

RANK_FEEDS = 16  # calibration feeds used to rank nodes (exposing every tensor is memory-hungry)


@dataclass
class AccuracyCheck:
    """The program's ranges, checked on the calibration split against the fp32 model's outputs there.

    Metrics that need labels are left to the gate (the calibration split is judged against the reference
    only); a metric that cannot be computed here is left out the same way."""

    metrics: list
    reference: dict[str, np.ndarray]
    feeds: list[dict[str, np.ndarray]]
    margin: float = 0.5

    @classmethod
    def of(cls, metrics: list, fp32: Path, feeds: list[dict[str, np.ndarray]], margin: float = 0.5
           ) -> AccuracyCheck | None:
        usable = [m for m in metrics if not m.needs_labels]
        if not usable or not feeds:
            return None
        return cls(metrics=usable, reference=_run(fp32, feeds), feeds=feeds, margin=margin)

    def _judged(self, model: Path):
        """(metric, value, the reference's own score, the tightened range) for each metric computable here."""
        outputs = _run(model, self.feeds)
        for m in self.metrics:
            try:
                value = m.compute(outputs, self.reference, None)
                own = m.compute(self.reference, self.reference, None)
            except Exception:
                continue
            yield m, value, own, _tightened(m.range, own, self.margin)

    def failures(self, model: Path) -> list[str]:
        """`metric = value, outside range` for each range the model misses on the calibration split, with
        `margin` of the headroom between the reference's own score and the bound kept in reserve (measured:
        per-channel int8 of a real MiniLM passed cosine >= 0.99 on 56 calibration sentences and fell to
        0.976 on 227 evaluation ones)."""
        return [f"{m.name} = {value:.6g} on the calibration split, outside {bound.describe(own, m.higher_is_better)}"
                for m, value, own, bound in self._judged(model) if not bound.check(value, own, m.higher_is_better)]

    def shortfall(self, model: Path) -> float:
        """How far the model is from passing on the calibration split: each metric's distance beyond its
        (tightened) bound as a fraction of the headroom, summed; 0 when every range passes."""
        total = 0.0
        for _, value, own, bound in self._judged(model):
            for limit, below in ((bound.at_least, True), (bound.at_most, False)):
                if limit is not None:
                    gap = (limit - value) if below else (value - limit)
                    total += max(0.0, gap) / (abs(own - limit) or 1.0)
        return total


    def headroom_used(self, model: Path) -> float | None:
        """The largest share of a range's headroom (from the reference's own score to the bound) the model uses
        on the calibration split: 0 as good as fp32, above 1 outside; None when no bound can be measured."""
        worst = None
        for m, value, own, _ in self._judged(model):
            for limit, below in ((m.range.at_least, True), (m.range.at_most, False)):
                if limit is not None and own != limit:
                    used = (own - value) / (own - limit) if below else (value - own) / (limit - own)
                    worst = used if worst is None else max(worst, used)
        return worst


def _tightened(rng, own: float, margin: float):
    """`rng` with each absolute bound moved `margin` of the way towards the reference's own score."""
    update = {}
    if rng.at_least is not None and own > rng.at_least:
        update["at_least"] = rng.at_least + margin * (own - rng.at_least)
    if rng.at_most is not None and own < rng.at_most:
        update["at_most"] = rng.at_most - margin * (rng.at_most - own)
    if rng.max_degradation is not None:
        update["max_degradation"] = rng.max_degradation * (1 - margin)
    return rng.model_copy(update=update)


def _session(model: Path | bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def _run(model: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    session = _session(model)
    names = [o.name for o in session.get_outputs()]
    per_feed = [session.run(names, feed) for feed in feeds]
    joined = {}
    for i, n in enumerate(names):
        parts = [np.asarray(out[i]) for out in per_feed]
        # samples at their own lengths: one tensor per feed, as the evaluation holds them
        joined[n] = np.concatenate(parts) if len({p.shape[1:] for p in parts}) == 1 else ragged.of(parts)
    return joined


def _exposed(model: onnx.ModelProto, names: list[str]) -> bytes:
    """The model with `names` added as outputs (float tensors; onnxruntime types them)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy.SerializeToString()


FLOAT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "SkipLayerNormalization", "BiasGelu",
             "FastGelu", "LayerNormalization", "Softmax", "Relu", "Tanh", "Sigmoid", "Erf", "Gelu"}
DQ = "_DequantizeLinear_Output"  # what onnxruntime's QDQ quantizer names the value a consumer reads


def _float_tensors(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(tensors known to be float, tensors known to be something else), from onnx's shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    known = {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type}
    return ({n for n, t in known.items() if t == onnx.TensorProto.FLOAT},
            {n for n, t in known.items() if t != onnx.TensorProto.FLOAT})


def rank_nodes(fp32: Path, quantized: Path, op_types: list[str] | None, feeds: list[dict[str, np.ndarray]]
               ) -> list[tuple[str, float]]:
    """The nodes of `fp32` that can be quantized (`op_types`, or any node writing a float tensor), worst first,
    with the relative error each adds: the error of what its consumers read (after requantization, for QDQ)
    minus the largest error of the values it reads (before)."""
    f_model = onnx.load(str(fp32))
    q_model = onnx.load(str(quantized))
    floats, others = _float_tensors(f_model)
    constants = {i.name for i in f_model.graph.initializer} | {i.name for i in f_model.graph.input}
    q_tensors = {o for n in q_model.graph.node for o in n.output}

    def is_float(t: str, op: str) -> bool:
        return t in floats or (t not in others and op in FLOAT_OPS)

    q_nodes = {n.name: n for n in q_model.graph.node}
    dequantized = {o for n in q_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}

    def quantized_in_q(n: onnx.NodeProto) -> bool:
        """Replaced by its quantized form (dynamic: MatMulInteger ...), or reading dequantized values (QDQ);
        a MatMul of two activations, which the quantizer leaves alone, is neither."""
        q = q_nodes.get(n.name)
        return q is None or q.op_type != n.op_type or any(t in dequantized for t in q.input)

    nodes = [n for n in f_model.graph.node if n.name and n.output and quantized_in_q(n) and (
        n.op_type in op_types if op_types else is_float(n.output[0], n.op_type))]
    def reads_of(n: onnx.NodeProto) -> list[str]:
        ins = [*n.input[:1], *(n.input[1:2] if n.op_type == "MatMul" else [])] if n.op_type in FLOAT_OPS \
            else list(n.input)
        return [t for t in ins if t and t not in constants and (t in floats or (t not in others and
                                                                                n.op_type in FLOAT_OPS))]

    reads = {n.name: reads_of(n) for n in nodes}
    raw = sorted(({t for ts in reads.values() for t in ts} | {n.output[0] for n in nodes}) & q_tensors)
    if not nodes or not raw:
        return [(n.name, 0.0) for n in nodes]
    seen = sorted(f"{t}{DQ}" for t in raw if f"{t}{DQ}" in q_tensors)
    try:
        f_sess, q_sess = _session(_exposed(f_model, raw)), _session(_exposed(q_model, raw + seen))
    except Exception:  # a tensor onnxruntime will not expose: no ranking, nodes in graph order
        return [(n.name, 0.0) for n in nodes]
    f_names = [o.name for o in f_sess.get_outputs()]
    q_names = [o.name for o in q_sess.get_outputs()]
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for feed in feeds[:RANK_FEEDS]:
        f_out = dict(zip(f_names, f_sess.run(f_names, feed), strict=True))
        q_out = dict(zip(q_names, q_sess.run(q_names, feed), strict=True))
        for t in [*raw, *seen]:
            a = np.asarray(f_out[t.removesuffix(DQ)], np.float64)
            b = np.asarray(q_out[t], np.float64)
            if a.shape != b.shape:
                continue
            num[t] = num.get(t, 0.0) + float(np.sum((a - b) ** 2))
            den[t] = den.get(t, 0.0) + float(np.sum(a ** 2))
    err = {t: (num[t] / den[t]) ** 0.5 if den[t] > 0 else float(num[t] > 0) for t in num}
    scores = []
    for n in nodes:
        out = n.output[0]
        added = max(err.get(out, 0.0), err.get(f"{out}{DQ}", 0.0))
        inherited = max((err.get(t, 0.0) for t in reads[n.name]), default=0.0)
        scores.append((n.name, added - inherited))
    return sorted(scores, key=lambda s: -s[1])


def with_producers(model: onnx.ModelProto, kept: list[str]) -> list[str]:
    """`kept` plus the producers whose output only kept nodes read. QDQ requantizes a tensor when its producer
    or a consumer is quantized, so keeping a node in fp32 keeps its input in fp32 only with its producer."""
    by_output = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, set[str]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, set()).add(n.name)
    out = list(kept)
    for name in kept:
        node = next((n for n in model.graph.node if n.name == name), None)
        for t in node.input if node else []:
            producer = by_output.get(t)
            if producer and producer.name and producer.name not in out and consumers.get(t, set()) <= set(kept):
                out.append(producer.name)
    return out


IMPACT_RANKING_NODES = 64  # up to this many quantized nodes, each one's effect is measured on its own


def rank_by_impact(ctx: BuildContext, quantize: Callable[[Path, list[str]], None], nodes: list[str],
                   deadline: float) -> list[str]:
    """`nodes` ordered by how much keeping each one alone in fp32 brings the calibration split towards its
    ranges (quantize everything but that node, measure): what the error each node adds locally misses when
    errors compound downstream (measured on a real MiniLM: keeping the 8 nodes with the largest local error
    in fp32 moved its worst cosine from 0.976 to only 0.979). Nodes not measured before `deadline` keep their
    order behind the measured ones."""
    probe = ctx.out_dir / "model_int8_probe.onnx"
    measured: list[tuple[float, int, str]] = []
    for i, name in enumerate(nodes):
        if time.monotonic() > deadline:
            break
        quantize(probe, [name])
        measured.append((ctx.accuracy.shortfall(probe), i, name))
    probe.unlink(missing_ok=True)
    done = {name for _, _, name in measured}
    return [name for _, _, name in sorted(measured)] + [n for n in nodes if n not in done]


@dataclass
class ComputeOnly:
    """A QDQ model's retry that quantizes only its compute operators (`quantize` restricted to `op_types`),
    leaving the elementwise and pooling operators between them in fp32: one requantization per layer instead of
    one per operator. Measured on PP-OCRv4's text recognizer (38 convolutions, 13 matmuls, ~250 elementwise
    nodes; 120 lines, AMD EPYC): per-position agreement with fp32 0.930 with every operator quantized (1.72x of
    fp32's speed), 0.963 with only these (1.45x); keeping any ten consecutive convolutions in fp32 instead gained
    at most 0.008."""

    quantize: Callable[[Path, list[str]], None]
    op_types: list[str]


COMPUTE_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]


def quantize_with_fallback(ctx: BuildContext, fp32: Path, quantize: Callable[[Path, list[str]], None],
                           settings: RunSettings, op_types: list[str] | None,
                           compute_only: ComputeOnly | None = None) -> Built:
    """The fully quantized model, with accuracy-aware retries as `attempts` when it misses a range on the
    calibration split (and the program has a calibration split and ranges that can be judged there). With
    `compute_only` (a model quantized at every operator), the first retry quantizes only the compute operators,
    and the nodes kept in fp32 after it are chosen among those."""
    first_path = ctx.out_dir / "model_int8.onnx"
    quantize(first_path, [])
    first = Built(path=first_path, settings=settings)
    if ctx.accuracy is None or ctx.max_fallback_rounds <= 0:
        return first
    missed = ctx.accuracy.failures(first_path)
    if not missed:
        return first
    deadline = time.monotonic() + ctx.fallback_seconds
    start = 1
    if compute_only is not None and _has_ops(fp32, compute_only.op_types):
        dest = ctx.out_dir / "model_int8_compute.onnx"
        compute_only.quantize(dest, [])
        missed = ctx.accuracy.failures(dest)
        settings = settings.merged(quantized_ops=compute_only.op_types)
        first.attempts.append(Built(path=dest, settings=settings.merged(
            fallback_round=1, calibration_check="; ".join(missed) or "inside every range")))
        if not missed or ctx.max_fallback_rounds <= 1:
            return first
        first_path, quantize, op_types, start = dest, compute_only.quantize, compute_only.op_types, 2
    scores = rank_nodes(fp32, first_path, op_types, ctx.accuracy.feeds)
    ranked = [name for name, score in scores if score > 0] or [name for name, _ in scores]
    if op_types and len(ranked) <= IMPACT_RANKING_NODES:
        ranked = rank_by_impact(ctx, quantize, ranked, deadline)
    keep = 1
    for round_ in range(start, ctx.max_fallback_rounds + 1):
        if not ranked or time.monotonic() > deadline:
            break
        kept = ranked[:keep] if op_types else with_producers(onnx.load(str(fp32)), ranked[:keep])
        dest = ctx.out_dir / f"model_int8_fallback{round_}.onnx"
        quantize(dest, kept)
        missed = ctx.accuracy.failures(dest)
        first.attempts.append(Built(path=dest, settings=settings.merged(
            kept_fp32=kept, fallback_round=round_, calibration_check="; ".join(missed) or "inside every range")))
        if not missed or keep >= len(ranked):
            break
        keep = min(len(ranked), keep * 2)
    return first


def _has_ops(model: Path, op_types: list[str]) -> bool:
    return any(n.op_type in op_types for n in onnx.load(str(model), load_external_data=False).graph.node)
