"""`ort-int8-dynamic`: int8 weights for MatMul, activations quantized at run time; never on Conv. `ort-int8-smooth`:
the same per channel after SmoothQuant, weight MatMuls only.

onnxruntime's quantize_dynamic skips Gemm, so Gemm nodes are first rewritten to MatMul + Add; ConvInteger ran
5.5x slower than fp32 on ResNet-18 on these machines, so convolutions stay fp32.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from kiln.artifact.manifest import RunSettings
from kiln.optimize.candidates.base import BuildContext, Built
from kiln.optimize.quantize.accuracy_aware import quantize_with_fallback


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Gemm(A, B, C) with alpha=beta=1, transA=0 into MatMul(A, B') + C, so the quantizer sees it."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or node.input[1] not in inits):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[weight]).T.copy()
            weight = f"{weight}_T"
            model.graph.initializer.append(numpy_helper.from_array(w, weight))
        mm = f"{node.name or node.output[0]}_matmul"
        has_bias = len(node.input) > 2 and bool(node.input[2])
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [mm if has_bias else node.output[0]], name=mm))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm, node.input[2]], [node.output[0]], name=f"{mm}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def named_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node named (exports often leave names empty): accuracy-aware int8 keeps nodes in fp32 by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def build(ctx: BuildContext) -> Built:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rewritten = ctx.out_dir / "fp32_matmul.onnx"
    onnx.save(named_nodes(gemm_to_matmul(onnx.load(str(ctx.prepared)))), str(rewritten))

    def quantize(dest, exclude):
        quantize_dynamic(str(rewritten), str(dest), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType[ctx.int8.quant_type], nodes_to_exclude=exclude)

    settings = RunSettings(optimization="all", quantization=f"int8 dynamic {ctx.int8.label} (MatMul)",
                           int8_isa=ctx.int8.isa)
    return quantize_with_fallback(ctx, rewritten, quantize, settings, ["MatMul"])


def build_7bit(ctx: BuildContext) -> Built:
    """`ort-int8-dynamic-7bit`: int8 weights restricted to 7 bits (onnxruntime's reduce_range), so that on a CPU
    without VNNI the u8 x s8 pairs `vpmaddubsw` adds in int16 cannot saturate (255 * 63 * 2 < 32767): the fast
    U8S8 kernels stay exact there, for one bit of weight precision."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rewritten = ctx.out_dir / "fp32_matmul.onnx"
    onnx.save(named_nodes(gemm_to_matmul(onnx.load(str(ctx.prepared)))), str(rewritten))

    def quantize(dest, exclude):
        quantize_dynamic(str(rewritten), str(dest), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         reduce_range=True, nodes_to_exclude=exclude)

    settings = RunSettings(optimization="all", quantization="int8 dynamic U8S8, 7-bit weights (MatMul)",
                           int8_isa=ctx.int8.isa)
    return quantize_with_fallback(ctx, rewritten, quantize, settings, ["MatMul"])


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose second operand is computed at run time (attention's Q·K^T and P·V): per-tensor dynamic int8
    of both sides is where the unfused transformer loses most (worst sentence cosine 0.93 on MiniLM-L6), and
    kiln's int8 kernels take constant weights only, so `ort-int8-smooth` keeps them fp32."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in inits]


def build_smooth(ctx: BuildContext) -> Built:
    """`ort-int8-smooth`: the unfused graph smoothed (SmoothQuant, alpha chosen on the calibration split), its
    weight MatMuls quantized per channel with dynamic activations. The fused graph's `ort-int8-fused-smooth`
    is faster under onnxruntime, but its QAttention is a contrib op no TVM frontend reads: this is the quantization
    `tvm-int8-smooth` compiles."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from kiln.optimize.quantize.smoothing import smoothed_for_int8

    model = named_nodes(gemm_to_matmul(onnx.load(str(ctx.prepared))))
    kept = activation_matmuls(model)

    def quantize(src, dest, exclude=()):
        quantize_dynamic(str(src), str(dest), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType[ctx.int8.quant_type], nodes_to_exclude=[*kept, *exclude])

    smoothed, how = smoothed_for_int8(model, ctx.calibration, ctx.out_dir, quantize,
                                      ctx.accuracy.headroom_used if ctx.accuracy else None)
    settings = RunSettings(optimization="all", calibration_feeds=len(ctx.calibration), int8_isa=ctx.int8.isa,
                           quantization=f"int8 dynamic {ctx.int8.label} per-channel (MatMul with constant weights, "
                                        f"{len(kept)} activation x activation MatMul(s) kept fp32); {how}")
    return quantize_with_fallback(ctx, smoothed, lambda dest, exclude: quantize(smoothed, dest, exclude), settings,
                                  ["MatMul"])
