"""`ort-fp32-<level>`: the unchanged model under another onnxruntime graph-optimization level.

Measured here: BASIC beats ALL by ~10 % on the encoder (FACTS.md), so the level is worth a candidate.
"""

from kiln.candidates.base import Built, Candidate, register

for _level in ("basic", "extended"):
    register(Candidate(
        name=f"ort-fp32-{_level}", backend="onnxruntime",
        description=f"fp32 model, onnxruntime graph optimization level {_level}",
        build=lambda ctx, level=_level: Built(path=ctx.model, settings={"optimization": level})))
