"""fp32 candidates in onnxruntime: the baseline, other graph levels, one thread.

The baseline is the unoptimized model under onnxruntime's default (all) graph optimizations. Measured on these
machines: BASIC beat ALL by ~10 % on a 4-layer encoder, so the level is worth a candidate; one intra-op thread
has no thread wake-ups per operator, which wins for small models and frees cores for a server's other work.
"""

from kiln.artifact.manifest import RunSettings
from kiln.optimize.candidates.base import BuildContext, Built


def build_baseline(ctx: BuildContext) -> Built:
    return Built(path=ctx.model, settings=RunSettings(optimization="all"))


def build_basic(ctx: BuildContext) -> Built:
    return Built(path=ctx.model, settings=RunSettings(optimization="basic"))


def build_extended(ctx: BuildContext) -> Built:
    return Built(path=ctx.model, settings=RunSettings(optimization="extended"))


def build_one_thread(ctx: BuildContext) -> Built:
    return Built(path=ctx.model, settings=RunSettings(optimization="all", threads=1))
