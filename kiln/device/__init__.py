"""A device: the machine an artifact will run on, serving kiln's measurements over TVM's RPC (kiln.device.functions,
started by kiln.device.server). Runtime layer: TVM's runtime, onnxruntime and kiln.runtime only; no compiler, no
optimizer, so the runtime image can be one."""
