"""Matmuls that read the same input (attention's Q, K and V) as one wider matmul, with constant weights.

Relax's CombineParallelMatmul does the rewrite, but only for weights that are function parameters and for bias
adds written `add(matmul, bias)`. kiln imports models with their weights as constants, and Optimum's BERT
exports write `Add(bias, MatMul)`. So the constants are lifted to parameters, adds with a constant first
operand are turned round (exact: addition commutes), TVM's pass runs, and the weights are bound back and the
concatenations folded at compile time: the built module holds one [K, 3N] weight per layer, not a concat.
The model is returned unchanged unless a group of matmuls was combined.
"""

from __future__ import annotations


def _lift(mod):
    """`mod` with every tensor constant of main a parameter, and the values to bind back."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    add = tvm.ir.Op.get("relax.add")

    @mutator
    class Lift(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.values: dict = {}

        def visit_call_(self, call):
            a, b = call.args if call.op.same_as(add) else (None, None)
            if isinstance(a, tvm.ir.GenericConst) and not isinstance(b, tvm.ir.GenericConst):
                call = relax.op.add(b, a)
            return super().visit_call_(call)

        def visit_generic_const_(self, op):
            if len(op.value.shape) == 0:  # scalars stay: no matmul weight or bias is one
                return op
            var = relax.Var(f"kiln_const_{len(self.values)}", op.ty)
            self.values[var] = op.value
            return var

    main = mod["main"]
    lifter = Lift(mod)
    body = lifter.visit_expr(main.body)
    lifted = mod.clone()
    lifted["main"] = relax.Function(list(main.params) + list(lifter.values), body, None, main.is_pure, main.attrs)
    return lifted, lifter.values


def combine_parallel_matmul():
    """A module pass (tvm.transform.Pass) for kiln's graph-pass registry."""
    import tvm
    from tvm import relax
    from tvm_ffi import structural_equal

    @tvm.transform.module_pass(opt_level=0, name="KilnCombineParallelMatmul")
    def rewrite(mod, _ctx):
        lifted, values = _lift(mod)
        combined = relax.transform.CombineParallelMatmul()(lifted)
        if structural_equal(combined, lifted):
            return mod
        bound = relax.transform.BindParams("main", values)(combined)
        return relax.transform.FoldConstant()(bound)

    return rewrite
