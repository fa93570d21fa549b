"""`onnxruntime`: the unoptimized model with onnxruntime's default (all) graph optimizations.

It is the reference: its outputs define agreement, its latency every speed-up, and it is always built."""

from kiln.artifact.manifest import BASELINE, RunSettings
from kiln.optimize.candidates.base import Built, Candidate, register

register(Candidate(name=BASELINE, backend="onnxruntime", stage="baseline",
                   description="the unchanged model in onnxruntime (graph optimization all): the reference",
                   build=lambda ctx: Built(path=ctx.model, settings=RunSettings(optimization="all"))))
