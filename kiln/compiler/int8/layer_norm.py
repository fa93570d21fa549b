"""A layer norm over the last axis as TE whose row sums a fixed schedule can vectorize.

TOPI's layer norm sums each row one element after the other (a float chain LLVM may not reorder) and TVM's
rfactor fails on it once it shares a PrimFunc with other reductions. Here each row is summed as LANES partial
sums (lane innermost: what LLVM vectorizes), then across the lanes, as kiln's dynamic-quantize kernel sums its
max and min. The same formula as TOPI's (mean, then the mean of squared deviations, rsqrt(var + eps)), summed in
another order: within a few float32 steps of it, not bit for bit.
"""

from __future__ import annotations

BLOCK = "kiln_layer_norm"  # the blocks' name prefix: how the schedule finds them
LANES = 16  # float32 lanes of a row's partial sums (one AVX-512 register; two AVX2 ones)


def lanes_for(extent: int, widest: int) -> int:
    """The most lanes (a power of two up to `widest`) that divide `extent`."""
    return next(n for n in (64, 32, 16, 8, 4, 2, 1) if n <= widest and extent % n == 0)


def layer_norm_te(data, gamma, beta, epsilon: float):
    """te: (data - mean) * rsqrt(var + epsilon) * gamma + beta over data's last axis (gamma, beta: [last])."""
    from tvm import te, tirx

    *lead, last = data.shape
    width = int(last)
    lanes = lanes_for(width, LANES)
    count = tirx.const(float(width), data.dtype)

    def row_sum(value, name):
        block = te.reduce_axis((0, width // lanes), f"{name}_block")
        partial = te.compute((*lead, lanes), lambda *i: te.sum(value(*i[:-1], block * lanes + i[-1]), axis=block),
                             name=f"{name}_partial")
        lane = te.reduce_axis((0, lanes), f"{name}_lane")
        return te.compute(tuple(lead), lambda *i: te.sum(partial[(*i, lane)], axis=lane), name=name)

    total = row_sum(lambda *i: data[i], f"{BLOCK}_sum")
    mean = te.compute(tuple(lead), lambda *i: total[i] / count, name=f"{BLOCK}_mean")

    def squared(*i):
        deviation = data[i] - mean[i[:-1]]
        return deviation * deviation

    spread = row_sum(squared, f"{BLOCK}_var_sum")
    eps = tirx.const(epsilon, data.dtype)
    return te.compute(data.shape, lambda *i: (data[i] - mean[i[:-1]]) * te.rsqrt(spread[i[:-1]] / count + eps)
                      * gamma[i[-1]] + beta[i[-1]], name=BLOCK)


def schedule(sch, parallel_from: int) -> None:
    """The norm's blocks, where the function has them, as one loop over rows: each row's sums (the partial
    sums' lane loop innermost: LLVM vectorizes it), mean and variance computed under it, then its output,
    vectorized; the rows split over the cores from `parallel_from` elements (below it, waking the thread pool
    costs more than it saves)."""
    try:
        out = sch.get_sblock(BLOCK)
    except Exception:  # noqa: BLE001 - TVM's own error type for a missing block: no norm in this kernel
        return
    *rows, last = sch.get_loops(out)
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    width = int(sch.get(last).extent)
    _, lane = sch.split(last, [None, lanes_for(width, 64)])
    sch.vectorize(lane)
    for name in ("var_sum", "var_sum_partial", "mean", "sum", "sum_partial"):
        sch.compute_at(sch.get_sblock(f"{BLOCK}_{name}"), row)
    for name in ("sum_partial", "var_sum_partial"):
        partial = sch.get_sblock(f"{BLOCK}_{name}")
        *_, lane, block = sch.get_loops(partial)
        sch.reorder(block, lane)
    if int(sch.get(row).extent) * width >= parallel_from:
        sch.parallel(row)
