"""The Relax pipelines kiln runs, as named data (the shape of TVM's relax/pipeline.py).

Tuning itself is kiln.compiler.tuning (relax's `static_shape_tuning` pipeline hides its scheduler, timeouts
and failures); before it comes `lowering`, after it `applying` the best records of the database.
"""

from __future__ import annotations

from pathlib import Path


def lowering():
    """The passes before tuning: the same prefix as relax's static_shape_tuning pipeline."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                     relax.transform.CanonicalizeBindings(), relax.pipeline.zero_pipeline()])


def prepacking():
    """Before tuning, with pre-packed weights: the weights are marked layout-free, so a schedule may ask for them
    in the layout its kernel reads best."""
    from tvm import relax

    return relax.transform.AttachAttrLayoutFreeBuffers()


def applying(work_dir: Path, prepack: bool = False):
    """The best record of each task in the database replaces TVM's default schedule (0.2-0.8 s). With
    `prepack`, the layout rewrites those records ask for are split out and, the weights being constants, folded
    at compile time: the exported module holds packed weights and `main` still takes only the inputs."""
    import tvm
    from tvm import relax

    from kiln.compiler.int8.intrinsics import register_all

    register_all()  # the database may hold int8 kernels' records, which name kiln's intrinsics
    steps = [relax.transform.MetaScheduleApplyDatabase(str(work_dir))]
    if prepack:
        steps += [relax.transform.SplitLayoutRewritePreproc(), relax.transform.LiftTransformParams(),
                  relax.transform.FoldConstant()]
    return tvm.transform.Sequential(steps)
