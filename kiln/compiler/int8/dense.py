"""The integer kernels kiln lowers quantized MatMul/Gemm (u8 activations [..., K] x pre-packed s8 weights ->
int32 [..., N]) and Conv (NHWC, weights packed the same way over (kh, kw, c)) to: TIR functions whose innermost
reduction block matches an int8 dot intrinsic (kiln.compiler.int8.intrinsics), so the search space
(kiln.compiler.int8.space) maps its 16 x 4 (or 8 x 2) block onto one instruction. The zero-point correction and
the rescale stay Relax operators after it: FuseOps folds them into the kernel's epilogue (the function is marked
output-elementwise-fusable)."""

from __future__ import annotations

OP_PATTERN_OUT_EWISE_FUSABLE = 4  # relax's OpPatternKind::kOutEWiseFusable: consumers fuse into the epilogue
FUNC_NAME = "kiln_int8_dense"
BLOCK = "int8_dense"  # the reduction block's name, which the schedule (kiln.compiler.int8.space) looks for


def int8_dense(a, w_packed, n_lanes: int, k_lanes: int):
    """te compute: out[..., n] = sum_k int32(a[..., k]) * int32(w[n // nl, k // kl, n % nl, k % kl]), its
    reduction written as (k_outer, k_lane) so the innermost reduction is the intrinsic's."""
    from tvm import te

    *lead, k_dim = a.shape
    n_out, k_out, nl, kl = w_packed.shape
    assert int(nl) == n_lanes and int(kl) == k_lanes
    ko, ki = te.reduce_axis((0, k_out), "ko"), te.reduce_axis((0, k_lanes), "ki")

    def body(*idx):
        *rows, n = idx
        return te.sum(a[(*rows, ko * k_lanes + ki)].astype("int32")
                      * w_packed[n // n_lanes, ko, n % n_lanes, ki].astype("int32"), axis=[ko, ki])

    return te.compute((*lead, n_out * nl), body, name=BLOCK)


def int8_conv2d_nhwc(a, w_packed, kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int],
                     n_lanes: int, k_lanes: int):
    """te compute: a convolution of padded u8 activations a [N, H, W, C] (C a multiple of k_lanes) by weights
    packed from [KH, KW, C, O] order: out[n, y, x, o] = sum over (kh, kw, c) of a[n, y*sy + kh*dy, x*sx + kw*dx,
    c] * w[kh, kw, c, o]. The lanes of one instruction are 4 (or 2) consecutive channels."""
    from tvm import te

    batch, height, width, channels = a.shape
    n_out, k_out, nl, kl = w_packed.shape
    (kh_, kw_), (sy, sx), (dy, dx) = kernel, strides, dilation
    c_out = int(channels) // k_lanes
    out_h = (int(height) - dy * (kh_ - 1) - 1) // sy + 1
    out_w = (int(width) - dx * (kw_ - 1) - 1) // sx + 1
    rh, rw = te.reduce_axis((0, kh_), "kh"), te.reduce_axis((0, kw_), "kw")
    co, ci = te.reduce_axis((0, c_out), "co"), te.reduce_axis((0, k_lanes), "ci")

    def body(n, y, x, o):
        return te.sum(a[n, y * sy + rh * dy, x * sx + rw * dx, co * k_lanes + ci].astype("int32")
                      * w_packed[o // n_lanes, (rh * kw_ + rw) * c_out + co, o % n_lanes, ci].astype("int32"),
                      axis=[rh, rw, co, ci])

    return te.compute((batch, out_h, out_w, n_out * nl), body, name=BLOCK)


def emit(bb, a, w_packed, n_lanes: int, k_lanes: int):
    """The call_tir of int8_dense on `a` (a Relax expr) and the packed weight constant."""
    return bb.call_te(int8_dense, a, w_packed, n_lanes, k_lanes, primfunc_name_hint=FUNC_NAME)


def emit_conv(bb, a, w_packed, kernel, strides, dilation, n_lanes: int, k_lanes: int):
    """The call_tir of int8_conv2d_nhwc on padded NHWC activations `a` and the packed weight constant."""
    return bb.call_te(int8_conv2d_nhwc, a, w_packed, tuple(kernel), tuple(strides), tuple(dilation), n_lanes,
                      k_lanes, primfunc_name_hint=FUNC_NAME)


def mark_fusable(mod):
    """Tag kiln's int8 dense functions output-elementwise-fusable, so the epilogue joins the kernel."""
    import tvm

    for gv, func in list(mod.functions.items()):
        if gv.name_hint.startswith(FUNC_NAME) and isinstance(func, tvm.tirx.PrimFunc):
            mod[gv] = func.with_attr("op_pattern", OP_PATTERN_OUT_EWISE_FUSABLE)
    return mod
