"""kiln's own graph passes before tuning, as named data (the shape of TVM's relax/pipeline.py).

Each is an exact rewrite of high-level Relax (before operators are lowered to TIR), aimed at what the tuner's
per-task table showed on transformers: attention as one kernel, its Q/K/V matmuls as one, transposes feeding
matmuls, reshapes that change nothing, batch norms after convolutions, GELU's erf as a polynomial (not
bit-exact: within ~5 float32 steps, see kiln/compiler/polynomial_erf.py). A pass is kept in the pipeline only where the
model's graph has its pattern (the profile: the pass changed the module), and the manifest lists the ones that
did (`tuning.pipeline`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kiln.errors import KilnError


class NotApplicable(KilnError):
    """An approximate pass asked for has nothing to change in this model (a candidate to skip, not to tune)."""


@dataclass(frozen=True)
class GraphPass:
    name: str
    what: str
    make: Callable[[], object]  # a tvm.transform.Pass
    exact: bool = True  # False: changes the numbers; a candidate's setting for the metric gate, never a default
    default: bool = True  # in kiln's pipeline (exact passes measured no slower on and off)
    int8: bool = False  # a step of kiln's int8 lowering (kiln.compiler.int8.qdq), run there where named, not by apply


def _relax(name: str) -> Callable[[], object]:
    def make():
        from tvm import relax

        return getattr(relax.transform, name)()

    return make


def _polynomial_erf():
    from kiln.compiler.polynomial_erf import polynomial_erf

    return polynomial_erf()


def _fused_attention():
    from kiln.compiler.fused_attention import fused_attention

    return fused_attention()


def _fuse_norm_quantize():
    from kiln.compiler.int8.norm_quantize import fuse_norm_quantize

    return fuse_norm_quantize()


def _combine_parallel_matmul():
    from kiln.compiler.parallel_matmul import combine_parallel_matmul

    return combine_parallel_matmul()


PASSES: dict[str, GraphPass] = {p.name: p for p in (
    GraphPass("fused-attention", "softmax(Q K^T / scale + mask) V as one kernel per layer instead of three",
              # not in any candidate yet: slower at 3 minutes on MiniLM (measured while some of its sampled
              # schedules were wrong, found and fixed in kiln.compiler.fused_attention since)
              _fused_attention, default=False),
    GraphPass("combine-parallel-matmul", "matmuls reading the same input (Q, K, V) as one wider matmul",
              _combine_parallel_matmul, default=False),  # adds a split kernel: joins DEFAULT once measured faster
    GraphPass("fuse-dynamic-quantize", "each DynamicQuantizeLinear (max, min, scale, zero point, quantize) as one "
              "kernel, a SmoothQuant scaling in front of it computed where it reads", lambda: None, int8=True),
    # int8 models only (after kiln's int8 lowering): sums a row in another order than TOPI (a few float32 steps)
    GraphPass("fuse-norm-quantize", "a layer norm computed inside the dynamic-quantize kernel that reads it",
              _fuse_norm_quantize),
    GraphPass("fuse-transpose-matmul", "a transpose feeding a matmul is read through its layout instead",
              _relax("FuseTransposeMatmul")),
    GraphPass("remove-redundant-reshape", "reshapes to the shape a tensor already has are dropped",
              _relax("RemoveRedundantReshape")),
    GraphPass("fold-batchnorm", "batch norms after convolutions folded into their weights",
              _relax("FoldBatchnormToConv2D")),
    # within ~5 float32 steps of erf (a libm call per element otherwise, never vectorized): exact for the gate
    GraphPass("polynomial-erf", "erf (GELU) as a vectorizable polynomial instead of a libm call per element",
              _polynomial_erf),
    GraphPass("fast-math", "exp, erf, tanh and softmax by TVM's fast approximations (GELU, attention)",
              _relax("FastMathTransform"), exact=False),
)}
DEFAULT = tuple(name for name, p in PASSES.items() if p.exact and p.default)


def apply(mod, names: tuple[str, ...] | list[str] = DEFAULT) -> tuple[object, list[str]]:
    """`mod` after each named pass in turn, and the names of those that changed it."""
    from tvm_ffi import structural_equal  # TVM 0.27: no longer tvm.ir.structural_equal

    applied = []
    for name in names:
        if PASSES[name].int8:
            continue
        rewritten = PASSES[name].make()(mod)
        if not structural_equal(rewritten, mod):
            applied.append(name)
            mod = rewritten
        elif not PASSES[name].exact:  # its candidate would only repeat the exact build
            raise NotApplicable(f"{name} does not apply: the model has nothing it rewrites ({PASSES[name].what})")
    return mod, applied
