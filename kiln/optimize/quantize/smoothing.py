"""SmoothQuant (Xiao et al., 2022): move activation outliers into the weights before int8.

Per-tensor int8 of an activation spends its 256 levels on its largest channel. Transformers' hidden states have
a few channels far larger than the rest (measured on all-MiniLM-L6-v2's 56 calibration sentences: the layer
norm before the feed-forward peaks at 28.5 in one channel, its median channel at 1.8), so the other channels
get a handful of levels. For a MatMul X·W the product is unchanged by X·diag(1/s) · diag(s)·W; with
s_j = max|X_j|^alpha / max|W_j|^(1-alpha) the activation's channels are evened out and the weights (quantized
per output channel, so they take the scale in their stride) absorb it.

The 1/s is folded into the producer where that is exact and free (the fused Attention's value projection: its
output channel j is a weighted sum of V's channel j); elsewhere a Mul node carries it (a per-channel scale on a
128x384 tensor, ~3 % of the int8 model's time on MiniLM-L6). The transformed fp32 model computes the same
function (cosine 1.0000000 on every sentence measured), so every accuracy change is the quantizer's.
alpha is chosen on the calibration split: the one whose quantized model's outputs come closest to fp32's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)
CHOOSE_FEEDS = 16  # calibration feeds used to compare alphas


@dataclass
class Target:
    """An activation and the MatMuls (input 0) or fused Attentions reading it with constant weights [K, N]."""

    activation: str
    readers: list[str]  # node names: they read the smoothed activation, any other reader the original
    weights: list[str]  # their initializers, whose rows are scaled by s
    only_readers: bool  # nothing else reads the activation (so 1/s may be folded into its producer)


def targets(model: onnx.ModelProto) -> list[Target]:
    """Activations read by at least one MatMul/Attention whose weight is its own constant: for those readers
    X·W = (X/s)·(s·W) exactly; other readers (a residual Add, say) keep reading X."""
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in model.graph.node:
        for i, t in enumerate(n.input):
            uses[t] = uses.get(t, 0) + 1
            readers.setdefault(t, []).append((n, i))
    found = []
    for activation, reads in readers.items():
        if activation in inits or not activation:
            continue
        chosen = [(node, node.input[1]) for node, index in reads
                  if index == 0 and node.op_type in ("MatMul", "Attention") and node.name and len(node.input) > 1
                  and node.input[1] in inits and len(inits[node.input[1]].dims) == 2 and uses[node.input[1]] == 1
                  and inits[node.input[1]].data_type == onnx.TensorProto.FLOAT]
        if chosen:
            found.append(Target(activation, [n.name for n, _ in chosen], [w for _, w in chosen],
                                only_readers=len(chosen) == len(reads)))
    return found


def channel_ranges(model: onnx.ModelProto, found: list[Target], feeds: list[dict[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """Each target activation's largest absolute value per channel (its last axis) over `feeds`."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for t in found:
        probe.graph.output.append(helper.make_tensor_value_info(t.activation, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [t.activation for t in found]
    ranges: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            peak = np.abs(np.asarray(value, np.float64)).reshape(-1, value.shape[-1]).max(axis=0)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges


def _attention_fold(model: onnx.ModelProto, activation: str, inits: dict) -> onnx.NodeProto | None:
    """The fused Attention producing `activation`, when 1/s can go into its value projection exactly."""
    producer = next((n for n in model.graph.node if activation in n.output), None)
    if producer is None or producer.op_type != "Attention" or producer.output[0] != activation:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in producer.attribute}
    if attrs.get("qkv_hidden_sizes") or len(producer.input) < 3:
        return None
    w, b = producer.input[1], producer.input[2]
    if w not in inits or b not in inits or len(inits[w].dims) != 2 or inits[w].dims[1] % 3:
        return None
    return producer


def smooth(model: onnx.ModelProto, found: list[Target], ranges: dict[str, np.ndarray], alpha: float
           ) -> tuple[onnx.ModelProto, int, int]:
    """A copy of `model` with every target smoothed: (model, activations smoothed, of which folded)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}

    def scaled(name: str, factor: np.ndarray, axis: int, part: slice = slice(None)) -> None:
        array = numpy_helper.to_array(inits[name]).astype(np.float64)
        view = array[:, part] if axis == 1 else array[part] if array.ndim == 1 else array
        view *= factor if axis == 1 or array.ndim == 1 else factor[:, None]
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    muls: dict[str, onnx.NodeProto | None] = {}
    rewired: dict[str, set[str]] = {}
    count = folded = 0
    for t in found:
        peak = ranges[t.activation]
        wpeak = np.max([np.abs(numpy_helper.to_array(inits[w])).max(axis=1) for w in t.weights], axis=0)
        if peak.shape != wpeak.shape:
            continue
        s = np.ones_like(peak)
        ok = (peak > 0) & (wpeak > 0)
        s[ok] = peak[ok] ** alpha / wpeak[ok] ** (1 - alpha)
        for w in t.weights:
            scaled(w, s, axis=0)
        count += 1
        attention = _attention_fold(out, t.activation, inits) if t.only_readers else None
        if attention is not None:
            hidden = inits[attention.input[1]].dims[1] // 3
            scaled(attention.input[1], 1 / s, axis=1, part=slice(2 * hidden, None))
            scaled(attention.input[2], 1 / s, axis=0, part=slice(2 * hidden, None))
            folded += 1
            continue
        scale = f"{t.activation}/smooth_scale"
        out.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), scale))
        muls[t.activation] = helper.make_node("Mul", [t.activation, scale], [f"{t.activation}/smoothed"],
                                              name=f"{t.activation}/smooth")
        rewired[t.activation] = set(t.readers)
    nodes = []
    for n in out.graph.node:  # each Mul goes right before the first node reading its activation
        for i, t in enumerate(n.input):
            if t in muls and n.name in rewired[t]:
                if muls[t] is not None:
                    nodes.append(muls[t])
                    muls[t] = None
                n.input[i] = f"{t}/smoothed"
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, count, folded


def relative_error(fp32: Path, candidate: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """sqrt(sum (a-b)^2 / sum a^2) over every float output and feed."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    a, b = (ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (fp32, candidate))
    num = den = 0.0
    for feed in feeds:
        for x, y in zip(a.run(None, feed), b.run(None, feed), strict=True):
            x, y = np.asarray(x), np.asarray(y)
            if x.dtype.kind == "f" and x.shape == y.shape:
                num += float(np.sum((x.astype(np.float64) - y) ** 2))
                den += float(np.sum(x.astype(np.float64) ** 2))
    return (num / den) ** 0.5 if den else 0.0


def smoothed_for_int8(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], work: Path,
                      quantize: Callable[[Path, Path], None], judge: Callable[[Path], float | None] | None = None
                      ) -> tuple[Path, str]:
    """The smoothed fp32 model (saved in `work`) whose `quantize`d form does best on the calibration feeds, and
    a description of what was done; the model unchanged when nothing could be smoothed.

    Best: the lowest `judge` (the share of the program's ranges' headroom used, where it can tell), else the
    lowest relative output error on CHOOSE_FEEDS feeds."""
    found = targets(model)
    reference = work / "model_fp32_unsmoothed.onnx"
    onnx.save(model, str(reference))
    if not found:
        return reference, "nothing to smooth (no MatMul reads an activation with a constant weight)"
    ranges = channel_ranges(model, found, feeds)
    probe = work / "model_smooth_probe.onnx"
    tried = []
    for alpha in ALPHAS:
        smoothed, count, folded = smooth(model, found, ranges, alpha)
        path = work / f"model_smooth_{alpha}.onnx"
        onnx.save(smoothed, str(path))
        quantize(path, probe)
        judged = judge(probe) if judge else None
        score, by = ((judged, "of the ranges' headroom used") if judged is not None else
                     (relative_error(reference, probe, feeds[:CHOOSE_FEEDS]), "output error"))
        tried.append((score, alpha, path, count, folded, by))
    probe.unlink(missing_ok=True)
    score, alpha, path, count, folded, by = min(tried, key=lambda t: t[0])
    for other in tried:
        if other[2] != path:
            other[2].unlink()
    return path, (f"SmoothQuant alpha {alpha} on {count} activations ({folded} folded into attention), chosen "
                  f"among {', '.join(map(str, ALPHAS))} on the calibration split ({score:.3g} {by})")
