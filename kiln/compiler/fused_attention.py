"""Attention as one kernel: softmax(Q·K^T [/ scale] [+ mask]) · V in a single PrimFunc per layer.

TVM fuses a matmul with the elementwise work after it, never a reduction into another reduction: on BERT-like
graphs attention is three kernels per layer (the Q·K^T matmul with its scale and mask, a softmax, the P·V
matmul), each writing and re-reading a [heads, T, T] tensor, and each a VM call. Here the chain is matched on
high-level Relax and replaced by one `call_tir` whose stages are the same arithmetic in the same order (scores,
scale, mask, max, exp, sum, divide, the weighted sum over V), so the result equals the unfused graph up to
float rounding order, and MetaSchedule tunes it as one task (it inlines the elementwise stages, tiles the two
matmuls and places the row reductions). Float32 only; anything else is left as it was.

The row sum is kept out of the weighted sum's loops (see `total` below): computed inside them, some sampled
schedules were wrong (tuned builds 2.5 % off, sampled ones up to 70 %). Not in any candidate yet
(kiln.compiler.passes) until it is measured faster than the unfused graph in benchmarks/tvm_passes.py.
"""

from __future__ import annotations

_SCALE_OPS = ("relax.divide", "relax.multiply")


def _attention_te(q, kt, v, mask=None, scale=None, scale_op: str = "relax.divide"):
    """The te stages of one attention block: q [.., T, D], kt [.., D, S], v [.., S, E] -> [.., T, E]."""
    from tvm import te, tirx

    lead = list(q.shape[:-2])
    t, d_len, s_len, e_len = q.shape[-2], q.shape[-1], kt.shape[-1], v.shape[-1]
    rank = len(lead) + 2

    def at(tensor, index):  # numpy broadcasting of a lower-rank or size-1 operand
        shape = list(tensor.shape)
        index = index[rank - len(shape):]
        return tensor[tuple(0 if int(n) == 1 else i for n, i in zip(shape, index, strict=True))]

    d = te.reduce_axis((0, d_len), "d")
    scores = te.compute((*lead, t, s_len), lambda *i: te.sum(q[(*i[:-1], d)] * kt[(*i[:-2], d, i[-1])], axis=d),
                        name="scores")

    def scaled(*i):
        x = scores[i]
        if scale is not None:
            x = x / scale if scale_op == "relax.divide" else x * scale
        return x + at(mask, list(i)) if mask is not None else x

    # materialized, not inlined into its two readers (the max and the exp): MetaSchedule's tiling of the scores
    # matmul fuses one consumer into its tiles and fails on a block read by two
    logits = te.compute((*lead, t, s_len), scaled, name="logits", attrs={"meta_schedule.inline_rule": "disable"})
    j = te.reduce_axis((0, s_len), "j")
    peak = te.compute((*lead, t), lambda *i: te.max(logits[(*i, j)], axis=j), name="peak")
    exp = te.compute((*lead, t, s_len), lambda *i: tirx.exp(logits[i] - peak[i[:-1]]), name="exp")
    k = te.reduce_axis((0, s_len), "k")
    # left where it is (in its own loops, before the weighted sum), never computed inside its consumer's loops:
    # TVM puts a reduction's init outside a loop its update is inside, and with `total` computed inside the
    # weighted sum's reduction loop, sampled schedules (2 to 4 in 30) summed each row once per outer tile of that
    # loop (outputs 27-71 % off). MetaSchedule's RandomComputeLocation skips a block marked as tiled.
    total = te.compute((*lead, t), lambda *i: te.sum(exp[(*i, k)], axis=k), name="total",
                       attrs={"meta_schedule.tiling_structure": "kiln: not moved"})
    probs = te.compute((*lead, t, s_len), lambda *i: exp[i] / total[i[:-1]], name="probs")
    m = te.reduce_axis((0, s_len), "m")
    return te.compute((*lead, t, e_len), lambda *i: te.sum(probs[(*i[:-1], m)] * v[(*i[:-2], m, i[-1])], axis=m),
                      name="attention")


def fused_attention():
    """A module pass (tvm.transform.Pass) for kiln's graph-pass registry."""
    import tvm
    from tvm import relax

    from kiln.compiler.int8 import layout

    def op_name(expr) -> str | None:
        return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None

    @relax.expr_functor.mutator
    class Fuse(relax.expr_functor.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.fused = 0

        def _bound(self, expr):
            return layout.bound(self, expr)

        def _scalar(self, expr):
            from tvm.ir.expr import Constant

            expr = self._bound(expr)
            if isinstance(expr, Constant) and expr.value.numpy().size == 1:
                return float(expr.value.numpy().reshape(()))
            return None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if op_name(call) != "relax.matmul":
                return call
            probs, v = call.args
            softmax = self._bound(probs)
            if op_name(softmax) != "relax.nn.softmax" or int(softmax.attrs.axis) not in (-1, len(
                    softmax.args[0].ty.shape) - 1):
                return call
            x, mask, scale, scale_op = self._bound(softmax.args[0]), None, None, "relax.divide"
            if op_name(x) == "relax.add":
                x, mask = self._bound(x.args[0]), x.args[1]
            if op_name(x) in _SCALE_OPS and self._scalar(x.args[1]) is not None:
                scale, scale_op, x = self._scalar(x.args[1]), op_name(x), self._bound(x.args[0])
            if op_name(x) != "relax.matmul":
                return call
            q, kt = x.args
            tensors = [q, kt, v] + ([mask] if mask is not None else [])
            if any(str(a.ty.dtype) != "float32" or a.ty.shape is None for a in tensors) or \
                    len(q.ty.shape) < 2 or len(q.ty.shape) != len(kt.ty.shape) or \
                    len(q.ty.shape) != len(v.ty.shape) or (mask is not None and len(mask.ty.shape) > len(q.ty.shape)):
                return call
            self.fused += 1
            return self.builder_.call_te(
                lambda q_, kt_, v_, *mask_: _attention_te(q_, kt_, v_, mask_[0] if mask_ else None,
                                                         None if scale is None else tvm.tirx.const(scale, "float32"),
                                                         scale_op),
                *tensors, primfunc_name_hint="fused_attention")

    @tvm.transform.module_pass(opt_level=0, name="KilnFusedAttention")
    def rewrite(mod, _ctx):
        fuser = Fuse(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                fuser.builder_.update_func(gvar, fuser.visit_expr(func))
        if not fuser.fused:
            return mod
        return relax.transform.DeadCodeElimination()(fuser.builder_.get())

    return rewrite
