"""The model's configuration in Triton's terms (`ModelConfig`), derived from the manifest.

perf_analyzer and tritonclient read it before anything else: the inputs and outputs with their types and
dims, `max_batch_size` (0: the server does not batch, every dimension, the batch's too, is in `dims`), the
platform and backend, how many instances serve it and on what, and whether responses are decoupled.
One dict, in the JSON form Triton's REST API returns; the gRPC answer is parsed from it.
"""

from __future__ import annotations

from kiln.artifact.manifest import Manifest
from kiln.serving.tensors import v2_datatype


def _tensor(spec, dims_key: str) -> dict:
    datatype = v2_datatype(spec.dtype)
    return {"name": spec.name, "data_type": f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}",
            dims_key: [int(d) for d in spec.shape]}


def model_config(manifest: Manifest, instances: int, device: str = "cpu") -> dict:
    m = manifest
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    return {
        "name": m.name,
        "platform": f"kiln_{m.backend}",
        "backend": "kiln",
        "runtime": m.backend,
        "max_batch_size": 0,
        "input": [_tensor(s, "dims") for s in m.inputs],
        "output": [_tensor(s, "dims") for s in m.outputs],
        "instance_group": [{"name": m.name, "kind": kind, "count": instances}],
        "parameters": {"kiln.artifact": {"string_value": m.id}, "kiln.selected": {"string_value": m.selected}},
        "model_transaction_policy": {"decoupled": False},
    }
