"""The user's side: the ModelProgram a user subclasses, its datasets and metrics, and how a program is found
and loaded (loader, archives, sources). Kept light: the serving runtime imports the user's mapping code
through `kiln.program.user_code` without pulling in onnx or the optimizer."""

from kiln.program import metrics
from kiln.program.datasets import Dataset
from kiln.program.model_program import ModelProgram

__all__ = ["Dataset", "ModelProgram", "metrics"]
