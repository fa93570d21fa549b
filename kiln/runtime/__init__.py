"""Serving-side runtime: runs a compiled module or an ONNX model. Never imports TVM's compiler."""

from kiln.runtime.runners import Runner, open_runner

__all__ = ["Runner", "open_runner"]
