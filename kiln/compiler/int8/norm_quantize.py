"""kiln's Relax pass: a layer norm computed inside the dynamic-quantize kernel that reads it.

In a dynamically quantized transformer every layer norm (after attention, after the FFN) feeds the
DynamicQuantizeLinear in front of the next int8 matmuls, and its output is read once more by the next residual
add. As imported, that is two kernels, each a thread-pool dispatch and a pass over the activation: the norm
writes it, the quantize reads it twice (its range, then the values). Here one kernel (TE: kiln.compiler.int8.
layer_norm, then kiln.compiler.int8.dynamic_quantize) normalizes each row, takes the range and quantizes, and
returns the norm beside the int8 values for the residual. The norm's sums run in another order than TOPI's
(within a few float32 steps); the quantization of those values is the same arithmetic.
"""

from __future__ import annotations

KERNEL = "dynamic_quantize_norm"  # starts with dynamic_quantize: kept opaque for FuseOps, like the plain kernel


def norm_dynamic_quantize_te(data, gamma, beta, *factor, epsilon: float):
    """te: (uint8 y, scale, zero point, the norm) of layer_norm(data) [* factor]."""
    from kiln.compiler.int8.dynamic_quantize import dynamic_quantize_te
    from kiln.compiler.int8.layer_norm import layer_norm_te

    normed = layer_norm_te(data, gamma, beta, epsilon)
    return (*dynamic_quantize_te(normed, *factor), normed)


def fuse_norm_quantize():
    """The pass (a tvm.transform.Pass): where kiln's dynamic-quantize kernel reads a float32 layer norm over the
    last axis, that kernel computes the norm too."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="kiln.FuseNormQuantize")
    def transform(mod, _ctx):
        return _fuse(mod)

    return transform


def _fuse(mod, func_name: str = "main"):
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant

    from kiln.compiler.int8.dynamic_quantize import OP_PATTERN_OPAQUE

    if func_name not in mod or not isinstance(mod[func_name], relax.Function):
        return mod
    func = mod[func_name]
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings
              if isinstance(b, relax.VarBinding)}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def norm(var):
        """The layer_norm call bound to `var` if it is one this kernel computes, else None."""
        value = values.get(var) if isinstance(var, relax.Var) else None
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name == "relax.nn.layer_norm"):
            return None
        data, gamma, beta = value.args
        rank = len(data.ty.shape)
        axes = [int(a) % rank for a in value.attrs.axes]
        shapes_known = all(isinstance(d, tvm.tirx.IntImm) for d in data.ty.shape)
        if axes != [rank - 1] or str(data.ty.dtype) != "float32" or not shapes_known \
                or not (value.attrs.center and value.attrs.scale) or len(gamma.ty.shape) != 1:
            return None
        return value

    targets = {}  # the norm's var -> the dynamic-quantize call_tir's var (one kernel per norm)
    for var, value in values.items():
        if isinstance(value, relax.Call) and value.op.same_as(call_tir) \
                and value.args[0].name_hint.startswith("dynamic_quantize") \
                and not value.args[0].name_hint.startswith(KERNEL):
            source, *factor = value.args[1].fields
            if norm(source) is not None and source not in targets \
                    and all(isinstance(f, Constant) for f in factor):
                targets[source] = var
    if not targets:
        return mod
    quantizes = {q: n for n, q in targets.items()}

    @relax.expr_functor.mutator
    class Fuse(relax.expr_functor.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.fused = {}  # the dynamic-quantize call's var -> the fused kernel's (y, scale, zero point, norm)

        def visit_var_binding_(self, binding):
            if binding.var in targets:
                call = norm(binding.var)
                data, gamma, beta = (self.visit_expr(a) for a in call.args)
                factor = list(values[targets[binding.var]].args[1].fields[1:])
                fused = self.builder_.emit(self.builder_.call_te(
                    norm_dynamic_quantize_te, data, gamma, beta, *factor, epsilon=float(call.attrs.epsilon),
                    primfunc_name_hint=KERNEL))
                self.fused[targets[binding.var]] = fused
                self.set_var_remap(binding.var, self.builder_.emit(relax.TupleGetItem(fused, 3)))
                return
            if binding.var in quantizes:
                fused = self.fused[binding.var]
                items = [self.builder_.emit(relax.TupleGetItem(fused, i)) for i in range(3)]
                self.set_var_remap(binding.var, self.builder_.emit(relax.Tuple(items)))
                return
            super().visit_var_binding_(binding)

    rewriter = Fuse(mod)
    out_func = rewriter.visit_expr(func)
    out = rewriter.builder_.get()
    out[func_name] = out_func
    for gv, prim in list(out.functions.items()):
        if gv.name_hint.startswith(KERNEL) and isinstance(prim, tvm.tirx.PrimFunc):
            out[gv] = prim.with_attr("op_pattern", OP_PATTERN_OPAQUE)
    return relax.transform.DeadCodeElimination()(out)
