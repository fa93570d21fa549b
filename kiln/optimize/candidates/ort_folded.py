"""`ort-fp32-folded`: the prepared model after kiln's exact graph folds (kiln.optimize.folding), in onnxruntime.

The folds are arithmetic identities (affine chains into convolutions, a decomposed HardSwish as the operator), so
the candidate is fp32 and differs from the original by float rounding only; what it changes is how many passes
over memory onnxruntime makes. A model with nothing to fold is skipped in a second.
"""

from __future__ import annotations

import onnx

from kiln.artifact.manifest import RunSettings
from kiln.errors import KilnError
from kiln.optimize.candidates.base import BuildContext, Built, Skipped
from kiln.optimize.candidates.ort_int8_static import at_least_opset
from kiln.optimize.folding import fold
from kiln.optimize.folding.hard_swish import OPSET


def build(ctx: BuildContext) -> Built:
    model = onnx.load(str(ctx.prepared))
    if any(n.op_type == "Clip" for n in model.graph.node):  # a HardSwish may be written out: the op needs opset 14
        try:
            model = at_least_opset(model, OPSET)
        except KilnError:
            pass  # the other folds still apply; the HardSwish pass skips a model below its opset
    folded, stats = fold(model)
    if not any(stats.values()):
        raise Skipped("nothing to fold: no constant affine next to a convolution, no HardSwish written out")
    out = ctx.out_dir / "model_folded.onnx"
    onnx.save(folded, str(out))
    done = ", ".join(f"{n} {name}" for name, n in stats.items() if n)
    return Built(path=out, settings=RunSettings(optimization="all", fusion=f"folded: {done}"))
