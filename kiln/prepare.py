"""Make an exported ONNX model compilable: fixed input shapes, inlined functions, folded constants.

Real exports compute reshape targets at run time (Shape->Gather->Concat->Reshape) and pass pads/axes as
tensors, which TVM's importer rejects. With every input shape fixed, onnxruntime's offline basic-level
optimization folds those subgraphs into constants, so the importer sees static shapes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import shape_inference

from kiln.errors import ModelError
from kiln.specs import TensorSpec


def fix_input_shapes(model: onnx.ModelProto, specs: list[TensorSpec]) -> onnx.ModelProto:
    """A copy of the model whose graph inputs carry the concrete shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    by_name = {s.name: s for s in specs}
    for vi in fixed.graph.input:
        spec = by_name.get(vi.name)
        if spec is None:
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in spec.shape:
            shape.dim.add().dim_value = d
    return fixed


def infer_shapes(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as exc:
        raise ModelError(f"ONNX shape inference failed with the declared shapes: {str(exc)[:400]}", where=where,
                         hint="check the declared input shapes") from None


def prepare(model: onnx.ModelProto, specs: list[TensorSpec], out: Path, where: str) -> onnx.ModelProto:
    """Write the prepared model to `out` and return it (shape-inferred)."""
    import onnxruntime as ort
    from onnx.inliner import inline_local_functions

    model = fix_input_shapes(model, specs)
    if model.functions:
        model = inline_local_functions(model)
    model = infer_shapes(model, where)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / "fixed.onnx"
        onnx.save(model, str(staged))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(staged), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:400]}",
                             where=where) from None
    folded = onnx.load(str(out))
    folded = infer_shapes(folded, where)
    onnx.save(folded, str(out))
    return folded
