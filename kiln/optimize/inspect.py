"""Read and check ONNX models: loading with clear errors, input specs, operator support, index guards."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from kiln.artifact.specs import Axis, IndexGuard, TensorSpec
from kiln.errors import ModelError

_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Expand"}
_GATHERS = {"Gather", "GatherElements"}


def load_model(path: Path, *, external_data: bool = True) -> onnx.ModelProto:
    """Load and check an ONNX file; a non-ONNX, truncated or invalid file gets a clear ModelError."""
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the model: {exc.strerror}", where=where) from None
    if not data:
        raise ModelError("the model file is empty", where=where)
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"not an ONNX model (protobuf decode failed: {exc})", where=where,
                         hint="export the model with torch.onnx.export or Optimum; the file may be truncated") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError("not an ONNX model (no graph found in the file)", where=where,
                         hint="the file may be truncated or of another format")
    if not model.graph.output:
        raise ModelError("the model's graph has no outputs, so there is nothing to compute or compare",
                         where=where, hint="re-export the model with its outputs declared")
    if external_data:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ModelError(f"cannot load external weight data: {exc}", where=where,
                             hint="keep the external data files beside the model") from None
    try:
        onnx.checker.check_model(model if model.ByteSize() < 2**31 - 1 else str(path), full_check=False)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise ModelError(f"the ONNX checker rejects the model: {' '.join(msg)[:800]}", where=where,
                         hint="re-export the model; check the opset and node attributes") from None
    return model


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?"))
    return dims


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_specs(model: onnx.ModelProto, shapes: dict[str, list[int]], where: str) -> list[TensorSpec]:
    """Specs of the graph inputs: declared shapes fix whole inputs; every other dynamic dimension stays -1, for
    the profile (kiln.optimize.profile) to give a range."""
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ModelError(f"shapes are declared for {unknown}, but the model's inputs are {names}", where=where,
                         hint="fix the names in --shape or in the program's `shapes`")
    specs = []
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"input {vi.name!r} is not a tensor (sequences/maps are not supported)", where=where)
        dims = _dims(vi)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name
        if vi.name in shapes:
            want = shapes[vi.name]
            if len(want) != len(dims) or any(isinstance(d, int) and d != w for d, w in zip(dims, want, strict=True)):
                raise ModelError(f"declared shape {want} for input {vi.name!r} does not fit the model's {dims}",
                                 where=where, hint="only dynamic dimensions may be chosen")
            dims = list(want)
        specs.append(TensorSpec(name=vi.name, dtype=dtype, shape=[d if isinstance(d, int) else -1 for d in dims]))
    return specs


def dynamic_dims(model: onnx.ModelProto, specs: list[TensorSpec]) -> dict[str, list[Axis]]:
    """The dynamic dimensions left in `specs`, by the model's name for each (its dim_param; INPUT:AXIS for an
    unnamed one), with the input axes each appears on, in graph order."""
    by_input = {vi.name: _dims(vi) for vi in graph_inputs(model)}
    out: dict[str, list[Axis]] = {}
    for spec in specs:
        for index, d in enumerate(spec.shape):
            if d >= 0:
                continue
            named = by_input.get(spec.name, [])[index] if index < len(by_input.get(spec.name, [])) else "?"
            axis = Axis(spec.name, index)
            out.setdefault(named if isinstance(named, str) and named != "?" else str(axis), []).append(axis)
    return out


def output_axes(model: onnx.ModelProto) -> dict[str, list[Axis]]:
    """Each named dynamic dimension of the outputs: the output axes it appears on."""
    out: dict[str, list[Axis]] = {}
    for vi in model.graph.output:
        for index, d in enumerate(_dims(vi)):
            if isinstance(d, str) and d != "?":
                out.setdefault(d, []).append(Axis(vi.name, index))
    return out


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    out = []
    for vi in model.graph.output:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name
        out.append(TensorSpec(name=vi.name, dtype=dtype, shape=[d if isinstance(d, int) else -1 for d in _dims(vi)]))
    return out


def _all_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """(node, path) for every node, expanding local functions and subgraphs."""
    functions = {(f.domain, f.name): f for f in model.functions}
    out: list[tuple[onnx.NodeProto, str]] = []

    def walk(nodes, prefix: str, depth: int = 0) -> None:
        for node in nodes:
            label = prefix + (node.name or f"<{node.op_type} #{len(out)}>")
            fn = functions.get((node.domain, node.op_type))
            if fn is not None and depth < 16:
                walk(fn.node, label + "/", depth + 1)
                continue
            out.append((node, label))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node, label + "/", depth + 1)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g.node, label + "/", depth + 1)

    walk(model.graph.node, "")
    return out


def unsupported_ops(model: onnx.ModelProto, supported: frozenset[str] | set[str]) -> dict[str, list[str]]:
    """op type -> node names of every node the compiler has no converter for."""
    missing: dict[str, list[str]] = defaultdict(list)
    for node, label in _all_nodes(model):
        domain = node.domain or "ai.onnx"
        if domain not in ("ai.onnx", "") or node.op_type not in supported:
            key = node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"
            missing[key].append(label)
    return dict(missing)


def describe_unsupported(missing: dict[str, list[str]]) -> str:
    """`TVM cannot compile N operator type(s): OP (nodes: a, b, ...); ...`"""
    listing = "; ".join(f"{op} (nodes: {', '.join(nodes[:5])}{', ...' if len(nodes) > 5 else ''})"
                        for op, nodes in sorted(missing.items()))
    return f"TVM cannot compile {len(missing)} operator type(s): {listing}"


def index_guards(model: onnx.ModelProto) -> list[IndexGuard]:
    """Integer graph inputs that (through shape-only ops) index a Gather whose axis length is known."""
    inputs = {i.name for i in graph_inputs(model)}
    producers = {o: n for n in model.graph.node for o in n.output}
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for vi in list(model.graph.value_info) + list(model.graph.input):
        if all(isinstance(d, int) for d in _dims(vi)):
            shapes.setdefault(vi.name, _dims(vi))  # type: ignore[arg-type]
    guards: dict[str, IndexGuard] = {}
    for node in model.graph.node:
        if node.op_type not in _GATHERS or len(node.input) < 2:
            continue
        source = node.input[1]
        while source not in inputs and source in producers and producers[source].op_type in _PASS_THROUGH:
            source = producers[source].input[0]
        data_shape = shapes.get(node.input[0])
        if source not in inputs or not data_shape:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        axis = axis + len(data_shape) if axis < 0 else axis
        if axis >= len(data_shape):
            continue
        n = int(data_shape[axis])
        prev = guards.get(source)
        if prev is None or n < prev.high:
            guards[source] = IndexGuard(input=source, low=-n, high=n, node=node.name or node.op_type)
    return list(guards.values())
