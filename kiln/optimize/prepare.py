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
import re
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


def _has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
               for a in n.attribute)


def _fold(model: onnx.ModelProto, out: Path, ort_disabled: tuple[str, ...]) -> None:
    """onnxruntime's basic-level folding of `model`, written to `out`; raises what onnxruntime raises."""
    import onnxruntime as ort

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / "fixed.onnx"
        onnx.save(model, str(staged))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        ort.InferenceSession(str(staged), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(ort_disabled))


def _first_line(exc: Exception) -> str:
    """onnxruntime's message without the path of kiln's staging file it names."""
    text = re.sub(r"Load model from \S+ failed: ?", "", str(exc))
    return text.splitlines()[0][:400] if text else type(exc).__name__


def prepare_model(model: onnx.ModelProto, specs: list[TensorSpec], out: Path, where: str,
                  ort_disabled: tuple[str, ...] = ORT_DISABLED, profile: Profile | None = None) -> onnx.ModelProto:
    """Write the prepared model to `out` and return it (shape-inferred). With a profile the dynamic dimensions
    stay symbolic: what onnxruntime's candidates build on, valid for every shape in it.

    A model with control flow (If/Loop subgraphs) can run at a shape yet fail onnxruntime's load-time type
    inference once its inputs are declared at that shape: both branches are inferred, and a branch the shape
    never takes (a `squeeze()` that drops a batch of 1) may not type-check. Fixing shapes is kiln's rewrite, not
    the user's model, so such a model keeps its own input declarations (it still runs at the declared shapes)."""
    from onnx.inliner import inline_local_functions

    if model.functions:
        model = inline_local_functions(model)
    fixed = infer_shapes(fix_input_shapes(model, specs, profile), where)
    try:
        _fold(fixed, out, ort_disabled)
    except Exception as exc:
        if not _has_subgraphs(model.graph):
            raise ModelError(f"onnxruntime cannot load the model: {_first_line(exc)}", where=where) from None
        try:
            _fold(model, out, ort_disabled)
        except Exception as own:
            raise ModelError(f"onnxruntime cannot load the model: {_first_line(own)}", where=where) from None
        declared = ", ".join(f"{s.name} " + "x".join(str(d) if d >= 0 else "?" for d in s.shape) for s in specs)
        _log.warning("%s: the model's inputs keep their own declarations: declared at %s, onnxruntime's type "
                     "inference fails inside the model's control flow (%s), though the model runs at those shapes",
                     where, declared, _first_line(exc))
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
