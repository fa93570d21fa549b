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


def applying(work_dir: Path):
    """The best record of each task in the database replaces TVM's default schedule (0.2-0.8 s)."""
    from tvm import relax

    return relax.transform.MetaScheduleApplyDatabase(str(work_dir))
