"""erf (BERT's GELU) as a polynomial the vectorizer can keep in registers, instead of a libm call per element.

TVM lowers float32 `erf` to LLVM's `erff` call, which no x86 target vectorizes: on the Intel Xeon of 2026-12-03
it took 676 us for one [32, 1536] GELU (all-MiniLM-L6-v2's feed-forward), 13 us as TOPI's `fast_erf` (Eigen's
rational approximation, clamped at +-4), whose largest error against double-precision erf on normal(0, 3) inputs
was 3.2e-7, about 5 float32 steps near 1 (libm's erff: 4.7e-8); onnxruntime's MLAS computes Erf with a
polynomial too. In an int8 kernel's epilogue the call was 92 % of the kernel's time (8 % of the int8 peak
after 960 trials). Only erf is rewritten: TVM's fast exp and tanh are coarser and stay behind `fast-math`.
"""

from __future__ import annotations


def polynomial_erf():
    """A function pass (tvm.transform.Pass) for kiln's graph-pass registry: every float32 relax.erf becomes a
    call_tir of TOPI's fast_erf, which FuseOps fuses like the elementwise op it replaces."""
    import tvm
    from tvm import relax, topi
    from tvm.relax.expr_functor import PyExprMutator, mutator

    erf = tvm.ir.Op.get("relax.erf")

    @mutator
    class Rewrite(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op.same_as(erf) and str(call.args[0].ty.dtype) == "float32":
                return self.builder_.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="erf_polynomial")
            return call

    @tvm.transform.module_pass(opt_level=0, name="KilnPolynomialErf")
    def rewrite(mod, _ctx):
        mutator_ = Rewrite(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator_.builder_.update_func(gvar, mutator_.visit_expr(func))
        return mutator_.builder_.get()

    return rewrite
