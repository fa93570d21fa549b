"""ONNX's DynamicQuantizeLinear as one kernel instead of six.

TVM's ONNX importer writes it as Relax arithmetic: max(x) and min(x) (two reductions over the activation), the
scale and the zero point from them (three scalar kernels after fusion), then quantize(x) (a third pass over
x). On a dynamically quantized transformer that is 6 VM calls, each a thread-pool dispatch, in front of each of
the 4 int8 matmul inputs of every layer, 24 of a layer's ~40 kernels, most of them on a handful of numbers.
Here the same arithmetic, in the same order, is one PrimFunc returning (y, scale, zero point): the same bits
(max and min are exact in any order; the rest is the importer's expressions written as TE), one task to tune.
"""

from __future__ import annotations

from kiln.compiler.int8 import layer_norm
from kiln.compiler.int8.layer_norm import lanes_for

QMAX = 255.0
RANGE_BLOCK = "kiln_dynamic_range"  # the max and min reductions' blocks (+ _max, _min): how a task is recognised
OP_PATTERN_OPAQUE = 8  # relax's OpPatternKind::kOpaque: FuseOps leaves the kernel as it is, for its own schedule
# elements from which the quantize is split over the cores: below, waking the thread pool costs more than it saves
PARALLEL_FROM = 8192
LANES = 16  # float32 lanes of the partial maxima and minima (one AVX-512 register; two AVX2 ones)


def dynamic_quantize_te(source, factor=None):
    """te: (uint8 y, scale [], zero point []) of x, as TVM's importer and legalization compute them:
    scale = (max(0, max x) - min(0, min x)) / 255, zp = u8(round(clip(0 - min(0, min x) / scale, 0, 255))),
    y = u8(clip(round(x / scale) + zp, 0, 255)). x is `source`, or source * factor (a constant broadcast as
    numpy does: SmoothQuant's per-channel scaling in front of the quantization), computed where it is read."""
    from tvm import te, tirx

    rank = len(source.shape)

    class Scaled:  # x[i], the product computed in place (one multiply, as the separate kernel did)
        shape, dtype = source.shape, source.dtype

        def __getitem__(self, index):
            if factor is None:
                return source[index]
            fshape = [int(n) for n in factor.shape]
            at = index[rank - len(fshape):]
            return source[index] * factor[tuple(0 if n == 1 else i for n, i in zip(fshape, at, strict=True))]

    x = Scaled()
    lanes = lanes_for(int(x.shape[-1]), LANES)
    *lead, last = x.shape

    def reduced(reducer, name):
        """reducer of x over everything, in two steps: partial[lane] over the rest, then over the lanes (what
        the schedule vectorizes; TVM's rfactor cannot split it out here, beside the kernel's 0-d blocks)."""
        axes = [te.reduce_axis((0, n), f"{name}{i}") for i, n in enumerate(lead)]
        block = te.reduce_axis((0, int(last) // lanes), f"{name}_block")
        partial = te.compute((lanes,), lambda lane: reducer(x[(*axes, block * lanes + lane)], axis=[*axes, block]),
                             name=name + "_partial")
        lane = te.reduce_axis((0, lanes), f"{name}_lane")
        return te.compute((1,), lambda _: reducer(partial[lane], axis=lane), name=name)

    hi, lo = reduced(te.max, RANGE_BLOCK + "_max"), reduced(te.min, RANGE_BLOCK + "_min")
    zero, top = tirx.const(0.0, x.dtype), tirx.const(QMAX, x.dtype)
    scale = te.compute((), lambda: (te.max(zero, hi[0]) - te.min(zero, lo[0])) / top, name="scale")
    point = te.compute((), lambda: te.round(te.max(te.min(zero - te.min(zero, lo[0]) / scale[()], top), zero))
                       .astype("uint8"), name="zero_point")

    def quantized(*i):
        value = te.round(x[tuple(i)] / scale[()]) + point[()].astype(x.dtype)
        return te.max(te.min(value, top), zero).astype("uint8")

    return te.compute(x.shape, quantized, name="quantized"), scale, point


def is_task(mod) -> bool:
    """Whether a tuning task is this kernel."""
    return f'sblock("{RANGE_BLOCK}' in mod.script()


def schedule(sch) -> None:
    """A fixed schedule: the max and the min each as LANES partial results (the lanes innermost), combined
    once; the quantize vectorized, parallel over chunks where it is large. Nothing is unrolled: LLVM took
    minutes (past the builder's 120 s timeout) on the unrolled select chains MetaSchedule's generic rules gave
    the reductions. A layer norm computed in the same kernel (kiln.compiler.int8.norm_quantize) is scheduled
    first."""
    layer_norm.schedule(sch, PARALLEL_FROM)
    for suffix in ("_max", "_min"):
        partial = sch.get_sblock(RANGE_BLOCK + suffix + "_partial")
        lane, *rest = sch.get_loops(partial)
        sch.reorder(*rest, lane)  # LLVM vectorizes it (the schedule may not: reduction loops are outside it)
    out = sch.get_sblock("quantized")
    flat = sch.fuse(*sch.get_loops(out))
    extent = int(sch.get(flat).extent)
    outer, lane = sch.split(flat, [None, lanes_for(extent, 64)])
    if extent >= PARALLEL_FROM:
        sch.parallel(outer)
    sch.vectorize(lane)


def space_generator():
    """This kernel's search space: the one schedule above (nothing to sample)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.ScheduleFn(schedule, sch_rules=[], postprocs=[
        ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteReductionBlock()], mutator_probs={})


def fuse(mod, func_name: str = "main"):
    """`mod` with each DynamicQuantizeLinear of `func_name` (as the importer writes it) as one call_tir."""
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant

    func = mod[func_name]
    values = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                values[binding.var] = binding.value

    def call(expr, name: str):
        """The args of `expr` (a var followed to its value) if it is a call of `name`, else None."""
        while isinstance(expr, relax.Var) and expr in values:
            expr = values[expr]
        ok = isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name
        return list(expr.args) if ok else None

    def const(expr, value: float) -> bool:
        """expr is the scalar `value` (a constant tensor, or an IntImm/FloatImm as clip's bounds are)."""
        if not isinstance(expr, Constant):
            return False
        held = expr.value
        if isinstance(held, int | float):
            return float(held) == value
        return held.numpy().size == 1 and float(held.numpy().reshape(())) == value

    def reduced(expr, name: str, bound_name: str, x) -> bool:
        """expr is bound_name(0, name(x)) (maximum(0, max(x)) or minimum(0, min(x)))."""
        args = call(expr, bound_name)
        inner = call(args[1], name) if args and const(args[0], 0.0) else None
        return bool(inner) and inner[0].same_as(x)

    def scale_of(expr, x) -> bool:
        div = call(expr, "relax.divide")
        sub = call(div[0], "relax.subtract") if div and const(div[1], QMAX) else None
        return bool(sub) and reduced(sub[0], "relax.max", "relax.maximum", x) \
            and reduced(sub[1], "relax.min", "relax.minimum", x)

    def zero_point_of(expr, scale, x) -> bool:
        cast = call(expr, "relax.astype")
        rounded = call(cast[0], "relax.round") if cast else None
        clipped = call(rounded[0], "relax.clip") if rounded else None
        sub = call(clipped[0], "relax.subtract") if clipped else None
        div = call(sub[1], "relax.divide") if sub and const(sub[0], 0.0) else None
        return bool(div) and div[1].same_as(scale) and reduced(div[0], "relax.min", "relax.minimum", x) \
            and const(clipped[1], 0.0) and const(clipped[2], QMAX)

    uses: dict = {}
    for value in values.values():
        relax.analysis.post_order_visit(value, lambda e: uses.__setitem__(e, uses.get(e, 0) + 1)
                                        if isinstance(e, relax.Var) else None)

    def scaled(x):
        """(h, constant c) where x = h * c (SmoothQuant's scaling) is read by the quantization alone (max, min,
        quantize), so the kernel can multiply where it reads; None otherwise."""
        args = call(x, "relax.multiply")
        if not args or uses.get(x, 0) != 3:
            return None
        tensor, factor = args if isinstance(args[1], Constant) else args[::-1]
        if not isinstance(factor, Constant) or isinstance(tensor, Constant) or not hasattr(factor.value, "numpy"):
            return None
        shape = [int(d) for d in x.ty.shape]
        if [int(d) for d in tensor.ty.shape] != shape or factor.value.numpy().ndim > len(shape):
            return None
        return tensor, factor

    roles: dict = {}  # var -> (the activation, 0 y / 1 scale / 2 zero point)
    for var, value in values.items():
        args = call(value, "relax.quantize")
        if not args or str(value.attrs.out_dtype) != "uint8" or str(args[0].ty.dtype) != "float32":
            continue
        x, scale, point = args
        if scale_of(scale, x) and zero_point_of(point, scale, x) \
                and len(x.ty.shape) > 0 and all(isinstance(d, tvm.tirx.IntImm) for d in x.ty.shape):
            roles.update({var: (x, 0), scale: (x, 1), point: (x, 2)})
    if not roles:
        return mod

    @relax.expr_functor.mutator
    class Fuse(relax.expr_functor.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.fused = {}  # activation -> the fused kernel's (y, scale, zero point)

        def visit_var_binding_(self, binding):
            role = roles.get(binding.var)
            if role is None:
                return super().visit_var_binding_(binding)
            x, index = role
            if x not in self.fused:
                product = scaled(x)
                operands = [self.visit_expr(product[0]), product[1]] if product else [self.visit_expr(x)]
                self.fused[x] = self.builder_.emit(self.builder_.call_te(
                    dynamic_quantize_te, *operands, primfunc_name_hint="dynamic_quantize"))
            item = self.builder_.emit(relax.TupleGetItem(self.fused[x], index))
            self.set_var_remap(binding.var, item)

    rewriter = Fuse(mod)
    out_func = rewriter.visit_expr(func)
    out = rewriter.builder_.get()
    out[func_name] = out_func
    for gv, prim in list(out.functions.items()):
        if gv.name_hint.startswith("dynamic_quantize") and isinstance(prim, tvm.tirx.PrimFunc):
            out[gv] = prim.with_attr("op_pattern", OP_PATTERN_OPAQUE)
    return relax.transform.DeadCodeElimination()(out)
