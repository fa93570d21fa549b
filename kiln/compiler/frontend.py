"""ONNX into Relax: which operators TVM's importer has converters for, and the import itself."""

from __future__ import annotations

import functools
from pathlib import Path

from kiln.artifact.specs import TensorSpec
from kiln.errors import ModelError


@functools.cache
def supported_ops() -> frozenset[str]:
    """ONNX op types TVM's importer converts; cached, since importing the frontend takes ~1 s per process."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return frozenset(_get_convert_map())


def import_onnx(model_path: Path, inputs: list[TensorSpec]):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(model_path))
    try:
        return from_onnx(model, {s.name: s.shape for s in inputs}, {s.name: s.dtype for s in inputs},
                         keep_params_in_input=False)
    except Exception as exc:
        raise ModelError(f"TVM's ONNX importer failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
                         where=str(model_path), hint="try --candidates onnxruntime to skip the TVM candidate") from None
