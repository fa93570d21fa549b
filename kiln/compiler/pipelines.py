"""The Relax pipelines kiln runs, as named data (the shape of TVM's relax/pipeline.py).

Tuning needs `max_trials_per_task`, or the first task takes the whole budget; `total_trials=0` with an
existing database re-applies it without searching (0.2-0.8 s).
"""

from __future__ import annotations

from pathlib import Path


def lowering():
    """The passes before tuning: the same prefix as relax's static_shape_tuning pipeline."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                     relax.transform.CanonicalizeBindings(), relax.pipeline.zero_pipeline()])


def tuning(target, work_dir: Path, total_trials: int, max_trials_per_task: int):
    """relax's static_shape_tuning: lowering, MetaSchedule over every task (continuing the database in
    work_dir), then applying the best records."""
    from tvm import relax

    return relax.get_pipeline("static_shape_tuning", target=target, work_dir=str(work_dir),
                              total_trials=total_trials, max_trials_per_task=max_trials_per_task)


def count_tasks(mod, target) -> int:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    with tvm.target.Target(target):
        lowered = lowering()(mod)
    return len(ms.relax_integration.extract_tasks(lowered, target))
