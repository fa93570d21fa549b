"""The integer matmul kiln lowers quantized MatMul/Gemm to: u8 activations [..., K] x pre-packed s8 weights
-> int32 [..., N], as a TIR function whose reduction block matches an int8 dot intrinsic (kiln.compiler.int8
.intrinsics), so MetaSchedule's tensorizing rule (kiln.compiler.int8.space) can map its inner 16 x 4 (or 8 x 2)
block onto one instruction. The zero-point correction and the rescale stay Relax operators after it: FuseOps
folds them into this kernel's epilogue (the function is marked output-elementwise-fusable)."""

from __future__ import annotations

OP_PATTERN_OUT_EWISE_FUSABLE = 4  # relax's OpPatternKind::kOutEWiseFusable: consumers fuse into the epilogue
FUNC_NAME = "kiln_int8_dense"
BLOCK = "int8_dense"  # the reduction block's name, which the schedule (kiln.compiler.int8.space) looks for


def int8_dense(a, w_packed, n_lanes: int, k_lanes: int):
    """te compute: out[..., n] = sum_k int32(a[..., k]) * int32(w[n // nl, k // kl, n % nl, k % kl])."""
    from tvm import te

    *lead, k_dim = a.shape
    n_out, k_out, nl, kl = w_packed.shape
    assert int(nl) == n_lanes and int(kl) == k_lanes
    k = te.reduce_axis((0, k_dim), "k")

    def body(*idx):
        *rows, n = idx
        return te.sum(a[(*rows, k)].astype("int32")
                      * w_packed[n // n_lanes, k // k_lanes, n % n_lanes, k % k_lanes].astype("int32"), axis=k)

    return te.compute((*lead, n_out * nl), body, name=BLOCK)


def emit(bb, a, w_packed, n_lanes: int, k_lanes: int):
    """Emit the call_tir of int8_dense on `a` (a Relax expr) and the packed weight constant."""
    gv = bb.call_te(int8_dense, a, w_packed, n_lanes, k_lanes, primfunc_name_hint=FUNC_NAME)
    return gv


def mark_fusable(mod):
    """Tag kiln's int8 dense functions output-elementwise-fusable, so the epilogue joins the kernel."""
    import tvm

    for gv, func in list(mod.functions.items()):
        if gv.name_hint.startswith(FUNC_NAME) and isinstance(func, tvm.tirx.PrimFunc):
            mod[gv] = func.with_attr("op_pattern", OP_PATTERN_OUT_EWISE_FUSABLE)
    return mod
