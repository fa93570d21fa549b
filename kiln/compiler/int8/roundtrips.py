"""Exact simplifications of a quantized graph: the round trips the quantizer and the layout change leave behind.

On ResNet-50-thin (an NHWC input transposed to NCHW in the ONNX graph), quantize -> transpose -> dequantize ->
quantize -> transpose -> pad before the first convolution became one elementwise kernel that took 6 % of the
model's time: the quantizer's Q/DQ pair around the Transpose requantizes with the same scale and zero point,
and ConvertLayout's transpose back to NHWC undoes the model's own. Its max pool ran in float32 between a
dequantize and a quantize with the same parameters, reading and writing four times the bytes. Each rewrite
here gives the same integers:
- quantize(dequantize(q, s, z), s, z) -> q (round((q - z) * s / s) is q - z: the error is far below 0.5);
- permute_dims(permute_dims(x, p1), p2) -> one permute_dims, or x where they cancel, also with a per-tensor
  (de)quantize between them (elementwise: it commutes with a transpose);
- max_pool2d(dequantize(q, s, z)) -> dequantize(max_pool2d(q), s, z) for s > 0 (dequantize is increasing, and
  an integer pool pads with the type's minimum as the float one pads with -inf; a window is never all padding).
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.int8.layout import bound


def _value(expr) -> np.ndarray | None:
    from tvm.ir.expr import Constant

    return expr.value.numpy() if isinstance(expr, Constant) and hasattr(expr.value, "numpy") else None


def _same_parameters(a, b) -> bool:
    """Whether (de)quantize calls a and b have equal constant scales, zero points and axes."""
    if int(a.attrs.axis) != int(b.attrs.axis):
        return False
    for x, y in zip(a.args[1:], b.args[1:], strict=True):
        vx, vy = _value(x), _value(y)
        if vx is None or vy is None or vx.shape != vy.shape or not np.array_equal(vx.astype(np.float64),
                                                                                  vy.astype(np.float64)):
            return False
    return True


def _axes(call) -> list[int]:
    axes = call.attrs.axes
    rank = len(call.args[0].ty.shape)
    return list(range(rank))[::-1] if axes is None else [int(a) for a in axes]


def simplify(mod, func_name: str = "main"):
    """`mod` with the round trips above removed from `func_name` (bindings left unused are dropped)."""
    import tvm
    from tvm import relax

    def is_op(expr, name):
        return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name

    def composed(x, first: list[int], second: list[int]):
        """permute_dims(permute_dims(x, first), second) as one permute_dims, or x where they cancel."""
        axes = [first[a] for a in second]
        return x if axes == sorted(axes) else relax.op.permute_dims(x, axes)

    def per_tensor(expr) -> bool:
        """A quantize or dequantize with one scale and zero point (elementwise: it commutes with a transpose)."""
        return ((is_op(expr, "relax.quantize") or is_op(expr, "relax.dequantize"))
                and all(_value(a) is not None and _value(a).size == 1 for a in expr.args[1:]))

    @relax.expr_functor.mutator
    class Simplify(relax.expr_functor.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            inner = bound(self, call.args[0]) if isinstance(call, relax.Call) and call.args else None
            if is_op(call, "relax.quantize") and is_op(inner, "relax.dequantize"):
                q = inner.args[0]
                if str(q.ty.dtype) == str(call.attrs.out_dtype) and _same_parameters(call, inner):
                    return q
            if is_op(call, "relax.permute_dims") and is_op(inner, "relax.permute_dims"):
                return composed(inner.args[0], _axes(inner), _axes(call))
            if (is_op(call, "relax.permute_dims") and per_tensor(inner)
                    and is_op(bound(self, inner.args[0]), "relax.permute_dims")):  # a (de)quantize between
                first = bound(self, inner.args[0])
                moved = composed(first.args[0], _axes(first), _axes(call))
                if isinstance(moved, relax.Call):
                    moved = self.builder_.emit(moved)
                return relax.Call(inner.op, [moved, *inner.args[1:]], inner.attrs)
            if is_op(call, "relax.nn.max_pool2d") and is_op(inner, "relax.dequantize"):
                scale = _value(inner.args[1])
                if scale is not None and scale.size == 1 and float(scale.reshape(())) > 0:
                    pooled = self.builder_.emit(relax.Call(call.op, [inner.args[0]], call.attrs))
                    return relax.op.dequantize(pooled, *inner.args[1:], axis=int(inner.attrs.axis),
                                               out_dtype=str(inner.attrs.out_dtype))
            return call

    rewriter = Simplify(mod)
    func = rewriter.visit_expr(mod[func_name])
    out = rewriter.builder_.get()
    out[func_name] = func
    return relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(out))
