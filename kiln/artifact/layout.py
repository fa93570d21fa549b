"""The names inside an artifact folder: the contract between what publishes it and what serves it."""

MANIFEST = "manifest.json"
PROGRAM_DIR = "program"  # the program as given (mapping code, .proto, data), for re-optimization and serving
PROTOCOL_DIR = "protocol"  # the generated gRPC code the server and clients import
TUNING_DIR = "tuning"  # the TVM tuning database a later re-optimization continues from
BUILDS_DIR = "builds"  # a fleet's builds, one folder per target
REPORT_DIR = "report"  # candidates.md and candidates.svg
TVM_MODULE = "model.so"
ONNX_MODULE = "model.onnx"
TVM_BUCKETS = "buckets"  # TVM builds per shape bucket: bucket-VALUE.so each

# generated protocol files and services
SERVICE_PROTO = "kiln_service.proto"
V2_PROTO = "kiln_inference_v2.proto"
V2_DESCRIPTORS = "kiln_inference_v2.pb"  # its compiled descriptors: loaded into a pool of their own
SERVICE_NAME = "kiln.Model"
V2_SERVICE_NAME = "inference.GRPCInferenceService"
