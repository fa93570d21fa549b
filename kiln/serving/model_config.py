"""The model's configuration in Triton's terms (`ModelConfig`), derived from the manifest.

perf_analyzer and tritonclient read it before anything else: the inputs and outputs with their types and
dims (-1 where dynamic), `max_batch_size` (0: no dynamic batch axis, so every dimension, the batch's too, is in
`dims`; else the batch's upper end, and `dims` leave the batch axis out, as Triton's do), the platform and
backend, how many instances serve it and on what, and whether responses are decoupled.
One dict, in the JSON form Triton's REST API returns; the gRPC answer is parsed from it.
"""

from __future__ import annotations

from kiln.artifact.manifest import Manifest
from kiln.artifact.specs import Axis, Dim
from kiln.serving.tensors import v2_datatype


def _tensor(spec, dims_key: str, batched: bool = False) -> dict:
    """-1 for a dynamic dimension; with `batched`, the batch axis is left out of dims, as Triton does."""
    datatype = v2_datatype(spec.dtype)
    dims = [int(d) for d in spec.shape]
    return {"name": spec.name, "data_type": f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}",
            dims_key: dims[1:] if batched and dims else dims}


def batch_dim(manifest: Manifest) -> Dim | None:
    """The profile's batch dimension (Dim.batch) when it varies and leads every input: rows serving can split."""
    dim = manifest.profile.batch
    if dim and dim.varies and manifest.inputs and all(Axis(s.name, 0) in dim.axes for s in manifest.inputs):
        return dim
    return None


def model_config(manifest: Manifest, instances: int, device: str = "cpu", batching=None) -> dict:
    m = manifest
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    batch = batch_dim(m)
    outputs_batched = bool(batch) and all(s.shape and s.shape[0] < 0 for s in m.outputs)
    config = {
        "name": m.name,
        "platform": f"kiln_{m.backend}",
        "backend": "kiln",
        "runtime": m.backend,
        "max_batch_size": batch.high if batch and outputs_batched else 0,
        "input": [_tensor(s, "dims", bool(batch) and outputs_batched) for s in m.inputs],
        "output": [_tensor(s, "dims", bool(batch) and outputs_batched) for s in m.outputs],
        "instance_group": [{"name": m.name, "kind": kind, "count": instances}],
        "parameters": {"kiln.artifact": {"string_value": m.id}, "kiln.selected": {"string_value": m.selected}},
        "model_transaction_policy": {"decoupled": False},
    }
    if batching is not None and batching.on:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": batching.max_queue_delay_us,
                                      "preferred_batch_size": [batching.max_batch]}
    return config
