"""The search space of kiln's int8 kernels (dense and NHWC convolution): a tiled, parallel schedule whose innermost
block is one int8 dot intrinsic, with the fused epilogue computed per tile, vectorized.

MetaSchedule's generic tensorizing rule (MultiLevelTilingWithIntrin) did not give one buildable trial here: its
parallelize-vectorize-unroll rule vectorizes the loop around the tensorized block ("Cannot broadcast lanes=16
to 32": 64 of 64 trials failed to build). So this is a schedule function (topi's dense_vnni schedule, with its
tile sizes left to the search): the rows and the column blocks are split three ways, the reduction two ways, each
split sampled (`sample_perfect_tile`) so the evolutionary search and its cost model tune them like any other
task's; everything else about the schedule is fixed. The last row axis (a sequence, a convolution's x) is the one
tiled; the others (batch, y) stay outer loops, parallel with the tiles (fusing y and x into one tiled axis left
bindings blockize could not take).
"""

from __future__ import annotations

from kiln.compiler.int8.dense import BLOCK
from kiln.compiler.int8.intrinsics import Intrinsic, registered


def is_int8_task(mod) -> bool:
    """Whether a task's module holds kiln's int8 dense block (fused functions keep the block's name)."""
    return f'sblock("{BLOCK}' in mod.script()


def schedule(sch, intrin: Intrinsic) -> None:
    """Schedule the int8 dense block of `sch` (and its fused epilogue) around `intrin`."""
    dense = next(b for b in _blocks(sch) if sch.get(b).name_hint.startswith(BLOCK))
    epilogue = _inline_epilogue(sch, dense)
    loops = sch.get_loops(dense)
    kinds = [iv.iter_type for iv in sch.get(dense).iter_vars]  # 0: spatial, 2: reduction
    spatial = [lp for lp, k in zip(loops, kinds, strict=True) if k == 0]
    *rows, m, n = spatial  # the last row axis is tiled; the others (batch, a convolution's y) stay outer
    *reductions, k_o, k_i = [lp for lp, k in zip(loops, kinds, strict=True) if k != 0]
    n_o, n_i = sch.split(n, [None, intrin.n_lanes])
    m0, m1, m2 = sch.split(m, sch.sample_perfect_tile(m, n=3, max_innermost_factor=8))
    n0, n1, n2 = sch.split(n_o, sch.sample_perfect_tile(n_o, n=3, max_innermost_factor=8))
    k0, k1 = sch.split(k_o, sch.sample_perfect_tile(k_o, n=2, max_innermost_factor=64))
    sch.reorder(*rows, m0, n0, m1, n1, *reductions, k0, k1, m2, n2, n_i, k_i)
    outer = sch.fuse(*rows, m0, n0)
    sch.parallel(outer)
    if epilogue is not None:  # computed per tile, while its accumulators are in cache
        sch.reverse_compute_at(epilogue, n1, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(epilogue)[-1])
    init = sch.decompose_reduction(dense, reductions[0] if reductions else k0)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(n_i, intrin.tvm_name)
    unroll = sch.sample_categorical(candidates=[0, 16, 64], probs=[1 / 3, 1 / 3, 1 / 3])
    sch.annotate(outer, "pragma_auto_unroll_max_step", unroll)
    sch.annotate(outer, "pragma_unroll_explicit", 1)


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


def _inline_epilogue(sch, dense):
    """Inline every block but the dense one and the function's output into the output: the epilogue (zero-point
    correction, rescale, bias, activation, requantize) and the small producers FuseOps put beside it (the
    zero point's cast, its column correction). Returns the output block (None when the dense block is it)."""
    name = sch.get(dense).name_hint
    inlined = True
    while inlined:
        inlined = False
        for block in _blocks(sch):
            if sch.get(block).name_hint == name or not sch.get_consumers(block):
                continue
            try:
                sch.compute_inline(block)
                inlined = True
                break
            except Exception:  # tvm ScheduleError: a block that cannot be inlined stays where it is
                continue
    outputs = [b for b in _blocks(sch) if sch.get(b).name_hint != name and not sch.get_consumers(b)]
    return outputs[0] if len(outputs) == 1 else None


def space_generator(intrin_key: str):
    """A MetaSchedule space generator for int8 dense tasks on `intrin_key`, with the LLVM postprocessors and
    mutators (tile sizes and the unroll factor are what mutates)."""
    from tvm.s_tir import meta_schedule as ms

    intrin = registered(intrin_key)

    def fn(sch) -> None:
        schedule(sch, intrin)

    return ms.space_generator.ScheduleFn(fn, sch_rules=[], postprocs=[
        ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(),
        ms.postproc.RewriteReductionBlock()], mutator_probs="llvm")
