"""Transformer fusion: `ort-fp32-fused` and int8 built on the fused graph.

onnxruntime's transformer optimizer rewrites the subgraphs of an exported transformer into its fused
contrib operators (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu). Measured here on real
models and 283 real sentences (benchmarks/RESULTS.md, "Real models"): fusion alone 1.0-1.2x; per-channel
dynamic int8 of the fused graph 1.8-2.2x with a worst-sentence cosine of 0.996 on MiniLM-L3 (0.976 on
MiniLM-L6), where dynamic int8 of the unfused graph gave 0.952 (0.922): the fused graph keeps attention's
softmax and the layer norms in fp32 and quantizes the projections per channel.

A model without a transformer's patterns is skipped with that reason, in a second (nothing is fused).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from kiln.artifact.manifest import RunSettings
from kiln.optimize.candidates.base import BuildContext, Built, Skipped
from kiln.optimize.candidates.ort_int8_dynamic import named_nodes
from kiln.optimize.quantize.accuracy_aware import quantize_with_fallback

FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "SkipSimplifiedLayerNormalization")
MODEL_TYPES = ("bert", "bart", "gpt2", "t5", "vit", "clip", "swin", "phi")


def detect_model_type(model: onnx.ModelProto) -> str | None:
    """A transformer encoder's signature: attention's Softmax between MatMuls, and layer norms (the op or
    its ReduceMean form). onnxruntime's "bert" fusions cover BERT, RoBERTa, DistilBERT, MiniLM and ViT-style
    encoders; other families are named in the program (`transformer = "gpt2"`)."""
    ops = {n.op_type for n in model.graph.node}
    if "Softmax" in ops and "MatMul" in ops and ops & {"LayerNormalization", "ReduceMean"}:
        return "bert"
    return None


def basic_optimized(ctx: BuildContext) -> onnx.ModelProto:
    """The user's graph after onnxruntime's basic optimizations (constant folding, redundant node removal), what
    the transformer optimizer's own first step would do if it could run here (it imports torch for that).

    Without it, the masks of transformers' exports (Where/Expand) and their dynamic shapes hide the attention
    pattern: on an Optimum export of all-MiniLM-L6-v2 only 6 BiasGelu fused; with it, 1 EmbedLayerNormalization,
    6 Attention, 6 BiasGelu. It is the user's graph, not the static-shape one: fixing shapes folds the position
    ids' Shape/Slice pattern that EmbedLayerNormalization's fusion matches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(ctx.out_dir / "basic.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(ctx.model), opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(ctx.out_dir / "basic.onnx"))


def fuse(ctx: BuildContext) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The fused model and how many of each fused operator it has; Skipped when nothing could be fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    if ctx.transformer == "none":
        raise Skipped("the program turns transformer fusion off (transformer = 'none')")
    model_type = ctx.transformer or detect_model_type(onnx.load(str(ctx.model), load_external_data=False))
    if model_type is None:  # decided on the graph alone, before onnxruntime loads the weights
        raise Skipped("not a transformer: no attention (Softmax between MatMuls) with layer norms in the graph")
    model = basic_optimized(ctx)
    if model_type not in MODEL_TYPES:
        raise Skipped(f"unknown transformer type {model_type!r} (known: {', '.join(MODEL_TYPES)})")
    # opt_level 0: the Python fusions only (basic_optimized did onnxruntime's part); heads and hidden size are
    # read from the graph
    optimized = optimize_model(model, model_type=model_type, num_heads=0, hidden_size=0, opt_level=0)
    stats = {op: n for op, n in optimized.get_fused_operator_statistics().items() if op in FUSED_OPS and n}
    if not stats:
        raise Skipped(f"onnxruntime's {model_type} fusions matched nothing in this graph")
    fused = named_nodes(optimized.model)
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):  # what save_model_to_file would add
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused, stats


def _describe(stats: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in stats.items())


def build_fused(ctx: BuildContext) -> Built:
    model, stats = fuse(ctx)
    out = ctx.out_dir / "model_fused.onnx"
    onnx.save(model, str(out))
    return Built(path=out, settings=RunSettings(optimization="all", fusion=_describe(stats)))


def build_fused_dynamic(ctx: BuildContext) -> Built:
    """Per-channel int8 weights for MatMul and the fused Attention (QAttention), dynamic activations."""
    model, stats = fuse(ctx)
    fused = ctx.out_dir / "model_fused.onnx"
    onnx.save(model, str(fused))
    settings = RunSettings(optimization="all", fusion=_describe(stats), int8_isa=ctx.int8.isa,
                           quantization=f"int8 dynamic {ctx.int8.label} per-channel (MatMul, Attention) on the fused "
                                        "graph")
    return quantize_with_fallback(ctx, fused, lambda dest, exclude: _quantize_dynamic(ctx, fused, dest, exclude),
                                  settings, ["MatMul", "Attention"])


def _quantize_dynamic(ctx: BuildContext, src: Path, dest: Path, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dest), op_types_to_quantize=["MatMul", "Attention"], per_channel=True,
                     weight_type=QuantType[ctx.int8.quant_type], nodes_to_exclude=exclude,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # contrib ops' outputs


def build_fused_smooth(ctx: BuildContext) -> Built:
    """The fused graph smoothed (SmoothQuant, alpha chosen on the calibration split), then per-channel dynamic
    int8 as `ort-int8-fused-dynamic`: measured on MiniLM-L6 it lifts the worst evaluation sentence's cosine
    from 0.976 to 0.993 for ~3 % of the speed."""
    from kiln.optimize.quantize.smoothing import smoothed_for_int8

    model, stats = fuse(ctx)
    smoothed, how = smoothed_for_int8(model, ctx.calibration, ctx.out_dir,
                                      lambda src, dest: _quantize_dynamic(ctx, src, dest, []),
                                      ctx.accuracy.headroom_used if ctx.accuracy else None)
    settings = RunSettings(optimization="all", fusion=_describe(stats), calibration_feeds=len(ctx.calibration),
                           int8_isa=ctx.int8.isa, quantization=f"int8 dynamic {ctx.int8.label} per-channel (MatMul, "
                                                               f"Attention) on the fused graph; {how}")
    return quantize_with_fallback(ctx, smoothed, lambda dest, exclude: _quantize_dynamic(ctx, smoothed, dest, exclude),
                                  settings, ["MatMul", "Attention"])


def build_fused_static(ctx: BuildContext) -> Built:
    """QDQ int8 (uint8 activations, per-channel weights in the CPU's scheme) of the fused graph's MatMuls."""
    from kiln.optimize.candidates.ort_int8_static import quantize_qdq, ranges_folder

    model, stats = fuse(ctx)
    fused = ctx.out_dir / "model_fused.onnx"
    onnx.save(model, str(fused))
    ranges = ranges_folder(ctx)

    def quantize(dest, exclude):
        quantize_qdq(ctx, fused, dest, exclude, op_types=["MatMul"], ranges=ranges)

    settings = RunSettings(optimization="all", fusion=_describe(stats), calibration_feeds=len(ctx.calibration or []),
                           int8_isa=ctx.int8.isa, quantization=f"int8 static QDQ {ctx.int8.label} "
                           f"({ctx.calibration_method}) of the fused graph's MatMuls")
    return quantize_with_fallback(ctx, fused, quantize, settings, ["MatMul"])

