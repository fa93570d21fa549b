"""Make an exported ONNX model compilable: fixed input shapes, inlined functions, folded constants.

Real exports compute reshape targets at run time (Shape->Gather->Concat->Reshape) and pass pads/axes as
tensors, which TVM's importer rejects. With every input shape fixed, onnxruntime's offline basic-level
optimization folds those subgraphs into constants, so the importer sees static shapes.

Only the folding is wanted. The basic level also turns MatMul+Add into Gemm, which is 2-D, so every 3-D
MatMul (a transformer's feed-forward) comes back wrapped in Reshapes. TVM then cannot fuse what follows the
matmul into its epilogue: on MiniLM-L6 the GELU and the residual Add became kernels of their own between
reshapes (the GELU's: one schedule, no tuning). onnxruntime re-fuses at load time anyway.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
from onnx import shape_inference

from kiln.artifact.specs import Profile, TensorSpec
from kiln.errors import ModelError
from kiln.fs import file_sha256
from kiln.optimize.inspect import index_guards, load_model
from kiln.optimize.models import CheckedProgram, PreparedModel

_log = logging.getLogger("kiln.optimize")


def fix_input_shapes(model: onnx.ModelProto, specs: list[TensorSpec], profile: Profile | None = None
                     ) -> onnx.ModelProto:
    """A copy of the model whose graph inputs carry the specs' shapes: concrete, or for a dynamic dimension
    (-1) the profile's name for it, so every axis that shares a range shares a symbol."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    by_name = {s.name: s for s in specs}
    for vi in fixed.graph.input:
        spec = by_name.get(vi.name)
        if spec is None:
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for axis, d in enumerate(spec.shape):
            if d >= 0:
                shape.dim.add().dim_value = d
            else:
                dim = profile.axis(spec.name, axis) if profile else None
                shape.dim.add().dim_param = dim.name if dim else f"{spec.name}_{axis}"
    return fixed


def infer_shapes(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as exc:
        raise ModelError(f"ONNX shape inference failed with the declared shapes: {str(exc)[:400]}", where=where,
                         hint="check the declared input shapes") from None


# basic-level rewrites that hide structure from TVM's fusion (see above)
ORT_DISABLED = ("MatMulAddFusion",)


def prepare_model(model: onnx.ModelProto, specs: list[TensorSpec], out: Path, where: str,
                  ort_disabled: tuple[str, ...] = ORT_DISABLED, profile: Profile | None = None) -> onnx.ModelProto:
    """Write the prepared model to `out` and return it (shape-inferred). With a profile the dynamic dimensions
    stay symbolic: what onnxruntime's candidates build on, valid for every shape in it."""
    import onnxruntime as ort
    from onnx.inliner import inline_local_functions

    model = fix_input_shapes(model, specs, profile)
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
            ort.InferenceSession(str(staged), opts, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=list(ort_disabled))
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:400]}",
                             where=where) from None
    folded = onnx.load(str(out))
    folded = infer_shapes(folded, where)
    onnx.save(folded, str(out))
    return folded


def prepare(checked: CheckedProgram, log: logging.Logger | logging.LoggerAdapter = _log) -> PreparedModel:
    """The prepare stage: the user's model made compilable, in the work folder, with its index guards."""
    out = checked.work_dir / "prepared.onnx"
    model = load_model(Path(checked.model_path))
    before = len(model.graph.node)
    prepared = prepare_model(model, checked.inputs, out, checked.model_path, profile=checked.profile)
    log.info("prepared model: %d -> %d nodes (%s, constants folded)", before, len(prepared.graph.node),
             f"dynamic dimensions {checked.profile.describe()}" if checked.profile else "shapes fixed")
    return PreparedModel(path=str(out), sha256=file_sha256(out), guards=index_guards(prepared) or checked.guards)
