"""kiln: optimize an ONNX model ahead of time, gated by your metrics, and serve the result.

This package is the SDK and has no Prefect in it; flows/ and tasks/ orchestrate it. One layer per subpackage:
program (the user's side), artifact (the contract), runtime and serving (no compiler), optimize (the stages),
compiler (TVM), ship (images), cli and service (the front doors).
"""

from kiln.errors import InputError, KilnError
from kiln.program import Dataset, ModelProgram, metrics
from kiln.runtime.predictor import Predictor, load

__version__ = "0.1.0"
__all__ = ["Dataset", "InputError", "KilnError", "ModelProgram", "Predictor", "load", "metrics", "__version__"]
