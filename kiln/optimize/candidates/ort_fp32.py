"""`ort-fp32-<level>`: the unchanged model under another onnxruntime graph-optimization level.

Measured on these machines: BASIC beat ALL by ~10 % on a 4-layer encoder, so the level is worth a candidate.
"""

from kiln.artifact.manifest import RunSettings
from kiln.optimize.candidates.base import Built, Candidate, register

for _level in ("basic", "extended"):
    register(Candidate(
        name=f"ort-fp32-{_level}", backend="onnxruntime",
        description=f"fp32 model, onnxruntime graph optimization level {_level}",
        build=lambda ctx, level=_level: Built(path=ctx.model, settings=RunSettings(optimization=level))))

# one intra-op thread: no thread wake-ups per operator, which wins for small models and frees cores for
# a server's other work; measured against the baseline's all-core setting like every other candidate
register(Candidate(
    name="ort-fp32-1thread", backend="onnxruntime", description="fp32 model, one intra-op thread",
    build=lambda ctx: Built(path=ctx.model, settings=RunSettings(optimization="all", threads=1))))
