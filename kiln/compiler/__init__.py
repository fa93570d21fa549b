"""TVM only: import, pipelines as named data, MetaSchedule tuning and its databases, targets.

Nothing outside kiln.optimize (and benchmarks) imports this package; the serving runtime never does."""

from kiln.compiler.build import CompileResult, compile_model, first_round_need
from kiln.compiler.database import DB_FILES, MEASUREMENT
from kiln.compiler.frontend import import_onnx, supported_ops
from kiln.compiler.targets import device_for, target_config
from kiln.compiler.tuning import Limits, Progress

__all__ = ["DB_FILES", "MEASUREMENT", "CompileResult", "Limits", "Progress", "compile_model", "device_for",
           "first_round_need", "import_onnx", "supported_ops", "target_config"]
