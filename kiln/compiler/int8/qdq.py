"""kiln's Relax pass: quantized matmuls run as integer arithmetic.

TVM's ONNX importer turns a quantized model into float arithmetic around (de)quantization: a static QDQ MatMul
becomes `matmul(dequantize(x_q), dequantize(W_q))` in fp32, and onnxruntime's dynamic MatMulInteger becomes an
int32 x int32 matmul of widened values. Neither uses an int8 dot instruction. This pass rewrites both into
kiln's int8 dense kernel (kiln.compiler.int8.dense): u8 activations as they are, the int8 weights pre-packed for
the chosen intrinsic, int32 accumulation, and an epilogue that subtracts the activation zero point's column
correction and (static) rescales by the activation and per-channel weight scales. The epilogue, the bias, the
activation and the next quantize are ordinary Relax operators that FuseOps folds into the kernel.

Static (QDQ): matmul(dequantize(x_q, s_x, z_x), [permute_dims](dequantize(W_q, s_w, 0))) with W_q a constant,
and conv2d(dequantize(x_q), dequantize(W_q)) (one group) as an NHWC kernel padded with the zero point, the whole
graph moved to NHWC first (kiln.compiler.int8.layout) so that no transposes sit between the convolutions.
Dynamic (MatMulInteger): matmul(astype(x_q, int32) - z_x, W, out_dtype=int32) with W folding to an int32
constant in int8 range. uint8 weights with a zero point (U8U8, what kiln quantizes for CPUs without VNNI) are
shifted to int8 (w - 128, z_w - 128: the same differences) and their zero point's term, z_w * sum_k x, is a row
sum of the activations computed at run time, plus the constant K * z_x * z_w, as onnxruntime's U8U8 kernels do;
an exact intrinsic only (the shifted weights fill the int8 range: vpmaddubsw's int16 pair sums would overflow).
A matmul kept in fp32 (the accuracy-aware fallback excluded it from quantization) has no
dequantize around it and stays an fp32 matmul. What is not rewritten, and why, is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.compiler.int8 import dense, dynamic_quantize, layout, packing, roundtrips
from kiln.compiler.int8.intrinsics import Intrinsic


@dataclass
class Rewrites:
    """What the pass did: one line per quantized matmul rewritten, one per quantized matmul left as it was."""

    rewritten: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    channels_last: bool = False  # the graph was moved to NHWC first (kiln.compiler.int8.layout)
    quantize_fused: bool = False  # dynamic quantizations became one kernel each (kiln.compiler.int8.dynamic_quantize)


def _const(expr) -> np.ndarray | None:
    from tvm.ir.expr import Constant

    return expr.value.numpy() if isinstance(expr, Constant) else None


def rewrite(mod, intrin: Intrinsic, func_name: str = "main", fuse_quantize: bool = True) -> tuple[object, Rewrites]:
    """`mod` with every quantized matmul of `func_name` as kiln's int8 dense kernel, and what was done; with
    `fuse_quantize`, each DynamicQuantizeLinear one kernel first (kiln.compiler.int8.dynamic_quantize)."""
    import tvm
    from tvm import relax

    report = Rewrites()

    @relax.expr_functor.mutator
    class Rewriter(relax.expr_functor.PyExprMutator):
        def __init__(self, mod, mode: str):
            super().__init__(mod)
            self.mode = mode  # "static" (dequantize patterns), then "dynamic" (int32 matmuls of int8 values)

        def _bound(self, expr):
            return layout.bound(self, expr)

        def _fold(self, expr) -> np.ndarray | None:
            """The value of a constant expression (MatMulInteger's weights minus their zero point: astype,
            subtract, expand_dims, reshape, permute_dims over constants), evaluated with numpy; None otherwise."""
            expr = self._bound(expr)
            value = _const(expr)
            if value is not None or not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
                return value
            args = [self._fold(arg) for arg in expr.args if not isinstance(arg, relax.ShapeExpr)]
            if any(arg is None for arg in args):
                return None
            op, attrs = expr.op.name, expr.attrs
            if op == "relax.astype":
                return args[0].astype(str(attrs.dtype))
            if op == "relax.subtract":
                return np.subtract(args[0], args[1])
            if op == "relax.expand_dims":
                return np.expand_dims(args[0], tuple(int(a) for a in attrs.axis))
            if op == "relax.permute_dims":
                return np.transpose(args[0], None if attrs.axes is None else [int(a) for a in attrs.axes])
            if op == "relax.reshape":
                return args[0].reshape([int(d) for d in expr.ty.shape])
            return None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            out = None
            if call.op.name == "relax.matmul":
                out = self._static(call) if self.mode == "static" else self._dynamic(call)
            elif call.op.name == "relax.nn.conv2d" and self.mode == "static":
                out = self._static_conv(call)
            return call if out is None else out

        def _activation(self, x_q, zero):
            """u8 activations and their zero point (int8 ones are shifted by 128: same products, u8 range)."""
            if str(x_q.ty.dtype) == "uint8":
                return x_q, zero
            shifted = self.builder_.emit(relax.op.astype(relax.op.add(relax.op.astype(x_q, "int16"),
                                                                       relax.const(128, "int16")), "uint8"))
            return shifted, relax.op.add(zero, relax.const(128, "int32"))

        def _weights(self, w: np.ndarray, where: str) -> str | None:
            if w.ndim != 2:
                return f"{where}: weights of rank {w.ndim} (batched matmul)"
            if w.min() < -128 or w.max() > 127:
                return f"{where}: weights outside int8 after their zero point"
            if w.shape[0] % intrin.k_lanes:
                return f"{where}: K={w.shape[0]} not a multiple of the {intrin.key} block's {intrin.k_lanes}"
            return None

        def _emit_packed(self, w: np.ndarray, kernel, rank: int):
            """Emit `kernel(packed weights)` for w [K, N], N padded with zero columns up to the intrinsic's
            block and the padding cut off after."""
            n = w.shape[1]
            padded = np.pad(w, ((0, 0), (0, -n % intrin.n_lanes))).astype(np.int8)
            acc = self.builder_.emit(kernel(relax.const(packing.pack(padded, intrin))))
            if padded.shape[1] != n:
                acc = self.builder_.emit(relax.op.strided_slice(acc, axes=[rank - 1], begin=[0], end=[n]))
            return acc

        def _emit_dense(self, x_u8, zero_i32, w: np.ndarray, w_zero: np.ndarray | None = None):
            """int32 [..., N] = sum_k (x - z) * (w - z_w), as int8_dense(x, W) - z * colsum(W), and where the
            weights have a zero point z_w (uint8 weights, shifted to int8), - z_w * rowsum(x) + K * z * z_w: the
            activation's row sums computed at run time, as onnxruntime's U8U8 kernels do."""
            acc = self._emit_packed(w, lambda packed: dense.emit(self.builder_, x_u8, packed, intrin.n_lanes,
                                                                 intrin.k_lanes), rank=len(x_u8.ty.shape))
            out = relax.op.subtract(acc, relax.op.multiply(zero_i32, relax.const(packing.column_sums(w))))
            if w_zero is None or not np.any(w_zero):
                return out
            rows = self.builder_.emit(relax.op.sum(relax.op.astype(x_u8, "int32"), axis=[-1], keepdims=True))
            zw = np.broadcast_to(w_zero.astype(np.int32).reshape(-1), (w.shape[1],)).copy()
            out = relax.op.subtract(self.builder_.emit(out), relax.op.multiply(rows, relax.const(zw)))
            return relax.op.add(self.builder_.emit(out),
                                relax.op.multiply(zero_i32, relax.const((w.shape[0] * zw).astype(np.int32))))

        def _static(self, call):
            """matmul(dequantize(x_q), [permute_dims](dequantize(W_q))): the Gemm's transB is a permute_dims."""
            a, b = (self._bound(arg) for arg in call.args)
            transposed = _is(b, "relax.permute_dims")
            found = self._quantized_pair(a, self._bound(b.args[0]) if transposed else b, "static matmul",
                                         asymmetric=True)
            if found is None:
                return None
            x_q, s_x, z_x, w_q, s_w, axis, z_w = found
            if len(x_q.ty.shape) < 2:
                report.skipped.append("static matmul: a vector input (the kernel tiles rows)")
                return None
            w = w_q.T if transposed else w_q
            if transposed and w_q.ndim == 2:
                axis = 1 - axis
            w, z_w = _signed(w.astype(np.int32), z_w)
            why = self._weights(w, "static matmul") or _saturates(z_w, "static matmul")
            if why:
                report.skipped.append(why)
                return None
            k, n = w.shape
            s_w = np.broadcast_to(s_w.reshape(-1) if s_w.size > 1 and axis == 1 else s_w.reshape(()), (n,))
            x_u8, zero = self._activation(x_q, relax.const(int(z_x.reshape(())), "int32"))
            acc = self._emit_dense(x_u8, zero, w, z_w)
            scale = (float(s_x.reshape(())) * s_w.astype(np.float64)).astype(np.float32)
            report.rewritten.append(f"static {k}x{n}")
            return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale))

        def _quantized_pair(self, x, w, where: str, asymmetric: bool = False):
            """(x_q, s_x, z_x, w_q, s_w, the weight scale's axis, z_w) of dequantize(x_q) and dequantize(constant
            w_q) with a per-tensor activation quantization, or None (a reason reported where one applies). Weights
            with a zero point (uint8: U8U8) only where `asymmetric` (the matmul's epilogue corrects for it)."""
            if not (_is(x, "relax.dequantize") and _is(w, "relax.dequantize")):
                return None
            w_q, s_w, z_w = (_const(e) for e in (self._bound(w.args[0]), w.args[1], w.args[2]))
            s_x, z_x = _const(x.args[1]), _const(x.args[2])
            if w_q is None or s_w is None or s_x is None or z_x is None or s_x.size != 1 or z_x.size != 1:
                report.skipped.append(f"{where}: scales or weights computed at run time")
                return None
            if z_w is not None and np.any(z_w != 0) and not asymmetric:
                report.skipped.append(f"{where}: asymmetric weights (zero point != 0)")
                return None
            return self._bound(x.args[0]), s_x, z_x, w_q, s_w, int(w.attrs.axis), z_w

        def _static_conv(self, call):
            """conv2d(dequantize(x_q), dequantize(W_q)), one group, NCHW/OIHW or (after
            kiln.compiler.int8.layout.channels_last) NHWC/OHWI: padded with the activation zero point (the
            padding then adds nothing after the correction) and run NHWC so that one instruction reads 4 (or 2)
            consecutive channels; an NCHW conv is transposed there and back. Channels short of a multiple of
            those lanes are padded too, with zero weights."""
            attrs, where = call.attrs, "static conv"
            layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
            w_expr = self._bound(call.args[1])
            nhwc = layouts == ("NHWC", "OHWI", "NHWC")
            if nhwc and _is(w_expr, "relax.permute_dims") and [int(a) for a in w_expr.attrs.axes] == [0, 2, 3, 1]:
                w_expr = self._bound(w_expr.args[0])  # the OIHW weights ConvertLayout transposed
            elif layouts != ("NCHW", "OIHW", "NCHW"):
                if _is(self._bound(call.args[0]), "relax.dequantize"):
                    report.skipped.append(f"{where}: layout {'/'.join(layouts)}")
                return None
            found = self._quantized_pair(self._bound(call.args[0]), w_expr, where)
            if found is None:
                return None
            x_q, s_x, z_x, w_q, s_w, axis, _ = found
            if int(attrs.groups) != 1 or w_q.ndim != 4:
                report.skipped.append(f"{where}: groups {int(attrs.groups)}")
                return None
            o, c, kh, kw = w_q.shape
            extra = -c % intrin.k_lanes  # an RGB stem's 3 channels: up to the lanes, with zero weights
            w_q = np.pad(w_q, [(0, 0), (0, extra), (0, 0), (0, 0)])
            w = w_q.transpose(2, 3, 1, 0).reshape(kh * kw * (c + extra), o).astype(np.int32)  # k = (kh*KW+kw)*C+c
            top, left, bottom, right = (int(v) for v in attrs.padding)
            x_u8, zero = self._activation(x_q, relax.const(int(z_x.reshape(())), "int32"))
            z_pad = int(z_x.reshape(())) + (0 if str(x_q.ty.dtype) == "uint8" else 128)
            pads = [0, 0, top, bottom, left, right, 0, extra] if nhwc else [0, 0, 0, extra, top, bottom, left, right]
            padded = self.builder_.emit(relax.op.nn.pad(x_u8, pads, pad_value=float(z_pad))) if any(pads) else x_u8
            if not nhwc:
                padded = self.builder_.emit(relax.op.permute_dims(padded, [0, 2, 3, 1]))
            acc = self._emit_packed(w, lambda packed: dense.emit_conv(
                self.builder_, padded, packed, (kh, kw), [int(v) for v in attrs.strides],
                [int(v) for v in attrs.dilation], intrin.n_lanes, intrin.k_lanes), rank=4)
            acc = relax.op.subtract(acc, relax.op.multiply(zero, relax.const(packing.column_sums(w))))
            s_w = np.broadcast_to(s_w.reshape(-1) if s_w.size > 1 and axis == 0 else s_w.reshape(()), (o,))
            scale = (float(s_x.reshape(())) * s_w.astype(np.float64)).astype(np.float32)
            report.rewritten.append(f"static conv {o}x{c}x{kh}x{kw}")
            scaled = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale))
            return scaled if nhwc else relax.op.permute_dims(self.builder_.emit(scaled), [0, 3, 1, 2])

        def _dynamic(self, call):
            if str(call.attrs.out_dtype) != "int32":
                return None
            a = self._bound(call.args[0])
            w, w_zero = self._dynamic_weights(call.args[1])
            if not _is(a, "relax.subtract"):
                return None
            widened, zero = self._bound(a.args[0]), a.args[1]
            if not _is(widened, "relax.astype") or str(widened.args[0].ty.dtype) not in ("uint8", "int8"):
                return None
            where = "dynamic matmul"
            if w is None:
                report.skipped.append(f"{where}: weights computed at run time")
                return None
            why = self._weights(w, where) or _saturates(w_zero, where)
            if why:
                report.skipped.append(why)
                return None
            if len(widened.ty.shape) < 2:
                report.skipped.append(f"{where}: a vector input (the kernel tiles rows)")
                return None
            x_u8, zero = self._activation(widened.args[0], zero)
            report.rewritten.append(f"dynamic {w.shape[0]}x{w.shape[1]}")
            return self._emit_dense(x_u8, zero, w.astype(np.int8), w_zero)

        def _dynamic_weights(self, expr) -> tuple[np.ndarray | None, np.ndarray | None]:
            """MatMulInteger's weights as int8 values and their zero point: int8 weights minus their (zero)
            zero point folded; uint8 ones (U8U8) shifted to int8 with their zero point shifted alike, since
            w - z_w spans -255..255."""
            b = self._bound(expr)
            if _is(b, "relax.subtract"):
                raw, zp = self._fold(b.args[0]), self._fold(b.args[1])
                if raw is not None and zp is not None and raw.ndim == 2 and raw.min() >= 0 and raw.max() > 127 \
                        and raw.max() <= 255:
                    zp = np.asarray(zp).reshape(-1)
                    if zp.size in (1, raw.shape[1]):
                        return _signed(raw.astype(np.int32), zp)
            return self._fold(expr), None

    def _signed(w: np.ndarray, z_w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 weights (with their zero point) as int8 ones: w - 128 and z_w - 128 give the same w - z_w."""
        if z_w is None or not np.any(z_w) and w.min() >= -128 and w.max() <= 127:
            return w, None
        if w.min() >= 0 and w.max() <= 255 and (w.max() > 127 or np.any(z_w)):
            return w - 128, np.asarray(z_w, np.int32).reshape(-1) - 128
        return w, np.asarray(z_w, np.int32).reshape(-1)

    def _saturates(z_w: np.ndarray | None, where: str) -> str | None:
        """uint8 weights shifted to int8 fill its whole range: the int16 pair sums of a saturating intrinsic
        (vpmaddubsw) overflow; only an exact one sums them."""
        if z_w is not None and not intrin.exact:
            return f"{where}: uint8 weights need exact int32 sums; {intrin.key} saturates in int16"
        return None

    def _is(expr, op_name: str) -> bool:
        return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name

    if layout.has_nchw_quantized_conv(mod, func_name):
        mod = layout.channels_last(mod, func_name)
        report.channels_last = True
    out = roundtrips.simplify(mod, func_name)
    if fuse_quantize:
        fused = dynamic_quantize.fuse(out, func_name)
        report.quantize_fused = fused is not out
        out = fused
    for mode in ("static", "dynamic"):
        rewriter = Rewriter(out, mode)
        func = rewriter.visit_expr(out[func_name])
        out = rewriter.builder_.get()
        out[func_name] = func
    if not report.rewritten:
        return mod, report
    out = scalar_constants_as_vectors(relax.transform.DeadCodeElimination()(out), func_name)
    return dense.mark_fusable(out), report


_ELEMENTWISE = ("relax.multiply", "relax.add", "relax.subtract", "relax.divide")


def scalar_constants_as_vectors(mod, func_name: str = "main"):
    """Scalar constants in elementwise arithmetic as one-element tensors (the same broadcast).

    Legalization writes a scalar constant into the kernel's TIR as a literal, so each layer's matmul, whose
    epilogue multiplies by that layer's own weight scale, was a workload of its own: 24 int8 tasks to tune on a
    4-layer encoder instead of 3. As a one-element buffer the scale is an argument, and equal kernels are one
    task again (MetaSchedule dedupes tasks by their TIR)."""
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant

    def scalar_const(expr):
        return isinstance(expr, Constant) and expr.value.numpy().ndim == 0

    @relax.expr_functor.mutator
    class Lift(relax.expr_functor.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name in _ELEMENTWISE):
                return call
            args = list(call.args)
            for i, arg in enumerate(args):
                if getattr(args[1 - i].ty, "ndim", -1) < 1:  # a scalar (or unknown rank) beside it: keep it
                    continue
                if scalar_const(arg):
                    args[i] = relax.const(arg.value.numpy().reshape(1))
                elif isinstance(arg, relax.Var):  # tensor x (scalar x constant): the layer's combined scale
                    bound = self.lookup_binding(arg)
                    if (isinstance(bound, relax.Call) and bound.op == call.op and call.op.name == "relax.multiply"
                            and sum(map(scalar_const, bound.args)) == 1
                            and all(getattr(b.ty, "ndim", -1) == 0 for b in bound.args)):
                        value, const = sorted(bound.args, key=scalar_const)
                        args[i] = self.builder_.emit(relax.op.multiply(
                            value, relax.const(const.value.numpy().reshape(1))))
            return relax.Call(call.op, args, call.attrs) if args != list(call.args) else call

    lift = Lift(mod)
    func = lift.visit_expr(mod[func_name])
    out = lift.builder_.get()
    out[func_name] = func
    return out
