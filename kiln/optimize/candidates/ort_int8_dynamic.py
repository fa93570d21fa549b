"""`ort-int8-dynamic`: int8 weights for MatMul, activations quantized at run time; never on Conv.

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

