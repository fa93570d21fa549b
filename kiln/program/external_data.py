"""The files an ONNX model keeps its weights in beside itself (external data), which travel with it."""

from __future__ import annotations

from pathlib import Path


def external_data_files(model_path: Path) -> list[str]:
    """File names the model's tensors point to; empty for an unreadable model (validation reports it)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return []
    names = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return sorted(names)
