"""kiln: optimize an ONNX model ahead of time, gated by your metrics, and serve the result.

The SDK (this package) has no Prefect in it; flows/ and tasks/ orchestrate it.
"""

from kiln import metrics
from kiln.datasets import Dataset
from kiln.errors import KilnError
from kiln.predictor import Predictor, load
from kiln.program import ModelProgram

__version__ = "0.1.0"
__all__ = ["Dataset", "KilnError", "ModelProgram", "Predictor", "load", "metrics", "__version__"]
