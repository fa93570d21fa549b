"""A quantized CNN in channels-last (NHWC) order from end to end, before kiln's int8 conv kernels replace its convs.

kiln's int8 conv runs NHWC (one dot instruction reads 4 or 2 consecutive channels). On an NCHW graph each conv
was wrapped in two transposes, which FuseOps folded into the residual adds and quantizes around it: on
ResNet-50-thin those elementwise kernels took longer than the convolutions. Relax's ConvertLayout moves a whole
graph to NHWC, but it stops at quantize/dequantize (they have no layout rule) and puts the transposes back. So
the per-tensor activation (de)quantizes are first written as the elementwise arithmetic they legalize to
(round, add, clamp, cast: ops ConvertLayout carries through), the graph converted, and the same patterns
written back as quantize/dequantize for kiln's QDQ rewrite to find. Exact: the arithmetic is what they lower to.
"""

from __future__ import annotations

_BOUNDS = {"uint8": (0.0, 255.0), "int8": (-128.0, 127.0)}


def _scalar(expr) -> float | None:
    from tvm.ir.expr import Constant

    if isinstance(expr, Constant) and expr.value.numpy().size == 1:
        return expr.value.numpy().reshape(()).item()
    return None


def bound(mutator, expr):
    """The expression a dataflow var is bound to in `mutator`'s builder (the importer binds every call to a
    var), followed through vars bound to vars."""
    from tvm import relax

    while isinstance(expr, relax.Var):
        value = mutator.lookup_binding(expr)
        if value is None:
            return expr
        expr = value
    return expr


def has_nchw_quantized_conv(mod, func_name: str = "main") -> bool:
    """Whether `func_name` has an NCHW convolution and dequantizes (a quantized CNN: what channels_last is for)."""
    from tvm import relax

    ops = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            nchw = expr.op.name == "relax.nn.conv2d" and str(expr.attrs.data_layout) == "NCHW"
            ops.add("conv" if nchw else expr.op.name)

    relax.analysis.post_order_visit(mod[func_name], visit)
    return {"conv", "relax.dequantize"} <= ops


def channels_last(mod, func_name: str = "main"):
    """`mod` with its convolutions NHWC/OHWI and the layout carried through the quantized ops between them."""
    from tvm import relax

    mod = _rewrite(mod, func_name, _decomposer)
    # a transposed convolution keeps NCHW: carried into NHWC it has no legalization (TOPI's is NCHW only) and
    # the VM cannot run it (PP-OCRv4's detector upsamples with two)
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"],
                                         "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]})(mod)
    return _rewrite(mod, func_name, _recomposer)


def _rewrite(mod, func_name, mutator):
    rewriter = mutator()(mod)
    func = rewriter.visit_expr(mod[func_name])
    out = rewriter.builder_.get()
    out[func_name] = func
    return out


def _decomposer():
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Decompose(relax.expr_functor.PyExprMutator):
        """quantize(x, s, z) -> astype(min(max(round(x / s) + z, lo), hi)); dequantize(q, s, z) ->
        astype(astype(q, int32) - z, float32) * s: TVM's legalization of both, for per-tensor s and z."""

        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
            if name not in ("relax.quantize", "relax.dequantize"):
                return call
            x, s, z = call.args
            scale, zero = _scalar(s), _scalar(z)
            out_dtype, in_dtype = str(call.attrs.out_dtype), str(x.ty.dtype)
            per_tensor = scale is not None and zero is not None
            if not per_tensor or (out_dtype, in_dtype) not in (("uint8", "float32"), ("int8", "float32"),
                                                               ("float32", "uint8"), ("float32", "int8")):
                return call
            f32 = "float32"
            if name == "relax.quantize":
                lo, hi = _BOUNDS[out_dtype]
                r = relax.op.add(relax.op.round(relax.op.divide(x, relax.const(scale, f32))),
                                 relax.const(float(zero), f32))
                r = relax.op.minimum(relax.op.maximum(r, relax.const(lo, f32)), relax.const(hi, f32))
                return relax.op.astype(r, out_dtype)
            widened = relax.op.subtract(relax.op.astype(x, "int32"), relax.const(int(zero), "int32"))
            return relax.op.multiply(relax.op.astype(widened, f32), relax.const(scale, f32))

    return Decompose


def _recomposer():
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant

    def is_op(expr, name):
        return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name

    @relax.expr_functor.mutator
    class Recompose(relax.expr_functor.PyExprMutator):
        """The patterns _decomposer wrote, back as quantize/dequantize; a transpose of a dequantized tensor as
        the dequantize of the transposed int8 tensor (a quarter of the bytes to move)."""

        def _bound(self, expr):
            return bound(self, expr)

        def _chain(self, expr, *names):
            """[expr's op's scalar constant argument, ...] down a chain of ops with one tensor input each, and
            the tensor at its bottom; None where the chain differs."""
            consts = []
            for name in names:
                expr = self._bound(expr)
                if not is_op(expr, name):
                    return None
                if name in ("relax.astype", "relax.round", "relax.permute_dims"):
                    consts.append(expr.attrs)
                    expr = expr.args[0]
                    continue
                value = _scalar(expr.args[1])
                if value is None:
                    return None
                consts.append(value)
                expr = expr.args[0]
            return consts, expr

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if is_op(call, "relax.astype") and str(call.attrs.dtype) in _BOUNDS:
                found = self._chain(call, "relax.astype", "relax.minimum", "relax.maximum", "relax.add",
                                    "relax.round", "relax.divide")
                if found and found[0][1:3] == list(_BOUNDS[str(call.attrs.dtype)])[::-1]:
                    (_, _, _, zero, _, scale), x = found
                    return relax.op.quantize(x, relax.const(scale, "float32"),
                                             relax.const(int(zero), str(call.attrs.dtype)), axis=-1,
                                             out_dtype=str(call.attrs.dtype))
            if is_op(call, "relax.multiply"):
                found = self._chain(call, "relax.multiply", "relax.astype", "relax.subtract", "relax.astype")
                if found:
                    (scale, to_float, zero, to_int), q = found
                    if (str(q.ty.dtype) in _BOUNDS and str(to_float.dtype) == "float32"
                            and str(to_int.dtype) == "int32"):
                        return relax.op.dequantize(q, relax.const(scale, "float32"),
                                                   relax.const(int(zero), str(q.ty.dtype)), axis=-1)
            if is_op(call, "relax.permute_dims"):
                inner = self._bound(call.args[0])
                if (is_op(inner, "relax.dequantize") and _scalar(inner.args[1]) is not None
                        and not isinstance(self._bound(inner.args[0]), Constant)):  # not weights
                    moved = self.builder_.emit(relax.op.permute_dims(inner.args[0],
                                                                     [int(a) for a in call.attrs.axes]))
                    return relax.op.dequantize(moved, *inner.args[1:], axis=-1)
            return call

    return Recompose

