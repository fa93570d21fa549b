"""Whether padding alone explains a bucketed build's miss: the original model in onnxruntime, fed the same inputs
padded to the same buckets and cut back the same way, scored like the candidate.

A build per bucket is exact only where the outputs at the real positions do not read the padded ones. A model
that mixes positions along the padded axis (attention or pooling over a text line's width) changes its outputs
when padded, whatever compiles it: PP-OCRv4's recognizer in onnxruntime, its text lines padded with zeros to
its one width bucket (1530), kept its own arg-max character at 97 % of the time steps (40 lines). The row then
says so and what to change, instead of leaving the compiler suspected.
"""

from __future__ import annotations

from pathlib import Path

from kiln.artifact.manifest import RunSettings
from kiln.optimize.feeds import gather_outputs, run_all
from kiln.optimize.models import CheckedProgram
from kiln.optimize.scoring import compute_metrics, score
from kiln.runtime.buckets import BucketRunner
from kiln.runtime.runners import OrtRunner


def padding_misses(checked: CheckedProgram, settings: RunSettings, fds: list, samples, batch, metrics, reference,
                   labels, expected) -> str | None:
    """The reason to add to a bucketed build's row when onnxruntime misses a range on the padded inputs too,
    else None (then the build itself is off)."""
    names, buckets = settings.bucket_grid()
    dims = [checked.profile.dim(n) for n in names]
    if not names or not all(dims):
        return None
    model = OrtRunner(Path(checked.model_path), threads=settings.threads, optimization="all", spin=True)
    runner = BucketRunner(Path(), dims, buckets, checked.inputs, load=lambda _path, _specs: model)
    try:
        outputs = gather_outputs(run_all(runner.run, fds), samples, batch)
    except Exception:  # noqa: BLE001 - a second opinion only: the row keeps the reason it has
        return None
    finally:
        model.close()
    values = compute_metrics(metrics, outputs, reference, labels, where="onnxruntime on padded inputs")
    _, reasons = score(metrics, values, expected)
    if not reasons:
        return None
    label = " x ".join(names)
    return (f"padding alone misses the range: the original model in onnxruntime, fed the same inputs padded up to "
            f"these {label} buckets and cut back, gives {reasons[0]}: its outputs depend on the padded positions "
            f"(attention or pooling along {label}); set the pad value the model expects (`padding` in the "
            f"program), or fix {label} with --shape so that nothing is padded")
