"""The v2 tensor protocol's datatypes and tensor (de)serialization, with precise errors."""

from __future__ import annotations

import numpy as np

from kiln.artifact.specs import TensorSpec
from kiln.errors import InputError

V2_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
             "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
             "FP32": "float32", "FP64": "float64"}
NUMPY_TO_V2 = {v: k for k, v in V2_DTYPES.items()}
_CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
             "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents"}


def v2_datatype(dtype: str) -> str:
    return NUMPY_TO_V2.get(np.dtype(dtype).name, "BYTES")


def decode_inputs(request, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """numpy arrays from a ModelInferRequest; typed contents or raw_input_contents (little-endian)."""
    by_name = {s.name: s for s in specs}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    feed: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InputError(f"unknown input {tensor.name!r}; the model's inputs are {list(by_name)}")
        want = v2_datatype(spec.dtype)
        if tensor.datatype != want:
            raise InputError(f"input {tensor.name!r} has datatype {tensor.datatype or '(empty)'}, the model "
                             f"expects {want}")
        shape = [int(d) for d in tensor.shape]
        if any(d < 0 for d in shape):
            raise InputError(f"input {tensor.name!r} has a negative dimension in shape {shape}")
        count = int(np.prod(shape)) if shape else 1
        dtype = np.dtype(V2_DTYPES[want])
        if raw:
            data = raw[i]
            if len(data) != count * dtype.itemsize:
                raise InputError(f"input {tensor.name!r}: {len(data)} raw bytes, but shape {shape} of {want} "
                                 f"needs {count * dtype.itemsize}")
            arr = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        else:
            field = _CONTENTS.get(want)
            values = getattr(tensor.contents, field) if field else []
            if len(values) != count:
                raise InputError(f"input {tensor.name!r}: {len(values)} values in contents.{field}, but shape "
                                 f"{shape} needs {count}")
            arr = np.asarray(values, dtype=dtype)
        feed[tensor.name] = arr.reshape(shape)
    return feed


def encode_outputs(response, outputs: dict[str, np.ndarray], requested: list[str]) -> None:
    """Fill a ModelInferResponse with raw little-endian output tensors."""
    names = requested or list(outputs)
    for name in names:
        if name not in outputs:
            raise InputError(f"unknown output {name!r}; the model's outputs are {list(outputs)}")
        arr = np.asarray(outputs[name], order="C")
        out = response.outputs.add()
        out.name, out.datatype = name, v2_datatype(arr.dtype.name)
        out.shape.extend(arr.shape)
        response.raw_output_contents.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def decode_outputs(response) -> dict[str, np.ndarray]:
    """numpy arrays from a ModelInferResponse (client side)."""
    out = {}
    raw = list(response.raw_output_contents)
    for i, tensor in enumerate(response.outputs):
        dtype = np.dtype(V2_DTYPES[tensor.datatype]).newbyteorder("<")
        if raw:
            arr = np.frombuffer(raw[i], dtype=dtype)
        else:
            arr = np.asarray(getattr(tensor.contents, _CONTENTS[tensor.datatype]), dtype=dtype)
        out[tensor.name] = arr.reshape([int(d) for d in tensor.shape])
    return out


def encode_inputs(request, feed: dict[str, np.ndarray]) -> None:
    """Fill a ModelInferRequest with raw little-endian input tensors (client side)."""
    for name, value in feed.items():
        arr = np.asarray(value, order="C")
        t = request.inputs.add()
        t.name, t.datatype = name, v2_datatype(arr.dtype.name)
        t.shape.extend(arr.shape)
        request.raw_input_contents.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


# -- the REST flavour: JSON tensors and Triton's binary tensor extension ---------------------------------------
def decode_rest_inputs(header: dict, binary: memoryview, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """numpy arrays from a REST infer request: `data` (flat or nested JSON lists) or, with
    `parameters.binary_data_size`, that many bytes of the binary tail, taken in the inputs' order."""
    by_name = {s.name: s for s in specs}
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("the request has no \"inputs\" list", hint=f"send the model's inputs {list(by_name)}")
    feed: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        name = tensor.get("name") if isinstance(tensor, dict) else None
        spec = by_name.get(name)
        if spec is None:
            raise InputError(f"unknown input {name!r}; the model's inputs are {list(by_name)}")
        want = v2_datatype(spec.dtype)
        if tensor.get("datatype") != want:
            raise InputError(f"input {name!r} has datatype {tensor.get('datatype') or '(none)'}, the model "
                             f"expects {want}")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InputError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        count = int(np.prod(shape)) if shape else 1
        dtype = np.dtype(V2_DTYPES[want])
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if size != count * dtype.itemsize or offset + size > len(binary):
                raise InputError(f"input {name!r}: binary_data_size {size} (with {len(binary) - offset} bytes "
                                 f"left in the body), but shape {shape} of {want} needs {count * dtype.itemsize}")
            arr = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).astype(dtype)
            offset += size
        else:
            try:
                arr = np.asarray(tensor.get("data"), dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise InputError(f"input {name!r}: data is not a list of {want} values ({exc})") from None
            if arr.size != count:
                raise InputError(f"input {name!r}: {arr.size} values in data, but shape {shape} needs {count}")
        feed[name] = arr.reshape(shape)
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data left over after the inputs")
    return feed


def encode_rest_outputs(header: dict, outputs: dict[str, np.ndarray]) -> tuple[dict, list[bytes]]:
    """The response's `outputs` and the binary blobs that follow the JSON: an output goes binary when asked
    (`parameters.binary_data`, or the request's `binary_data_output`), as JSON `data` otherwise."""
    default = bool((header.get("parameters") or {}).get("binary_data_output", False))
    requested = header.get("outputs") or [{"name": n} for n in outputs]
    listed, blobs = [], []
    for req in requested:
        name = req.get("name")
        if name not in outputs:
            raise InputError(f"unknown output {name!r}; the model's outputs are {list(outputs)}")
        arr = np.asarray(outputs[name], order="C")
        out = {"name": name, "datatype": v2_datatype(arr.dtype.name), "shape": list(arr.shape)}
        if (req.get("parameters") or {}).get("binary_data", default):
            blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = arr.reshape(-1).tolist()
        listed.append(out)
    return {"outputs": listed}, blobs
