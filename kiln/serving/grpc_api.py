"""The gRPC methods: KServe v2 / Triton's GRPCInferenceService and the program's own service.

Requests arrive as bytes and are parsed here, so malformed bytes get INVALID_ARGUMENT with a message instead
of a generic deserialization failure. Each method parses, validates and answers through the protocol-neutral
`Inference`; its refusals become precise status codes.
"""

from __future__ import annotations

import logging
import time

import grpc
from google.protobuf import json_format, unknown_fields
from google.protobuf.message import DecodeError

from kiln.serving import protocol as protocols
from kiln.serving import tensors
from kiln.serving.model import Inference, Refused

log = logging.getLogger("kiln.serve")

CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
         "unavailable": grpc.StatusCode.UNAVAILABLE, "unsupported": grpc.StatusCode.UNIMPLEMENTED,
         "internal": grpc.StatusCode.INTERNAL}


def _parse(message_type, raw: bytes):
    msg = message_type()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        raise Refused("invalid",
                      f"malformed request: the bytes are not a {message_type.DESCRIPTOR.full_name} ({exc})") from None
    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        numbers = sorted({f.field_number for f in unknown})
        raise Refused("invalid", f"request has fields {numbers} unknown to {message_type.DESCRIPTOR.full_name}; is "
                                 "it the right message type?")
    return msg


class Handlers:
    """The gRPC face of one `Inference`."""

    def __init__(self, inference: Inference, protocol: protocols.Protocol, requests):
        self.inference = inference
        self.manifest = inference.manifest
        self.protocol = protocol
        self.v2 = protocol.v2
        self.requests = requests  # the request log (kiln.serving.server.RequestLog)

    # -- the program's own service ------------------------------------------------------------------------
    async def _predict_one(self, raw: bytes) -> bytes:
        inf = self.inference
        return await inf.infer(lambda: inf.map_request(_parse(self.protocol.request_type, raw)),
                               lambda out: inf.map_response(out, self.protocol.response_type).SerializeToString())

    async def predict(self, raw: bytes, context) -> bytes:
        return await self._call("Predict", context, self._predict_one(raw), len(raw))

    async def predict_stream(self, raws, context):
        async for raw in raws:
            yield await self._call("PredictStream", context, self._predict_one(raw), len(raw))

    # -- the v2 tensor protocol ---------------------------------------------------------------------------
    async def _infer(self, raw: bytes) -> bytes:
        request = _parse(self.v2.ModelInferRequest, raw)
        self.inference.check_model(request.model_name, request.model_version)

        def encode(outputs) -> bytes:
            response = self.v2.ModelInferResponse(model_name=self.manifest.name,
                                                  model_version=self.inference.version, id=request.id)
            tensors.encode_outputs(response, outputs, [o.name for o in request.outputs])
            return response.SerializeToString()

        return await self.inference.infer(lambda: tensors.decode_inputs(request, self.manifest.inputs), encode)

    async def model_infer(self, raw: bytes, context) -> bytes:
        return await self._call("ModelInfer", context, self._infer(raw), len(raw))

    async def model_stream_infer(self, raws, context):
        """Triton's streaming infer: an error answers in the stream (error_message) and the stream goes on."""
        async for raw in raws:
            start, code = time.perf_counter(), "OK"
            response = self.v2.ModelStreamInferResponse()
            try:
                response.infer_response.ParseFromString(await self._infer(raw))
            except Refused as exc:
                code, response.error_message = CODES[exc.kind].name, exc.message
            except Exception as exc:  # a bug, not the client's fault: answer it in the stream and go on
                log.exception("internal error in ModelStreamInfer")
                code, response.error_message = "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"
            finally:
                self._record("ModelStreamInfer", code, start, len(raw), context)
            yield response.SerializeToString()

    async def _answer(self, method: str, context, make):
        """A metadata-like call: no inference, but logged and counted like the others."""
        async def work():
            return make()

        return await self._call(method, context, work(), 0)

    async def model_metadata(self, request, context):
        def make():
            self.inference.check_model(request.name, request.version)
            return json_format.ParseDict(self.inference.metadata(), self.v2.ModelMetadataResponse())

        return await self._answer("ModelMetadata", context, make)

    async def model_config(self, request, context):
        def make():
            self.inference.check_model(request.name, request.version)
            # an artifact published before a field existed answers without it
            config = json_format.ParseDict(self.inference.config(), self.v2.ModelConfig(), ignore_unknown_fields=True)
            return self.v2.ModelConfigResponse(config=config)

        return await self._answer("ModelConfig", context, make)

    async def model_statistics(self, request, context):
        def make():
            self.inference.check_model(request.name, request.version)
            stats = json_format.ParseDict(self.inference.statistics(), self.v2.ModelStatistics())
            return self.v2.ModelStatisticsResponse(model_stats=[stats])

        return await self._answer("ModelStatistics", context, make)

    async def repository_index(self, request, context):
        def make():
            models = [m for m in self.inference.index() if not request.ready or m["state"] == "READY"]
            return json_format.ParseDict({"models": models}, self.v2.RepositoryIndexResponse())

        return await self._answer("RepositoryIndex", context, make)

    async def model_ready(self, request, context):
        ready = self.inference.ready and self.inference.serves(request.name, request.version)
        return self.v2.ModelReadyResponse(ready=ready)

    async def server_live(self, request, context):
        return self.v2.ServerLiveResponse(live=True)

    async def server_ready(self, request, context):
        return self.v2.ServerReadyResponse(ready=self.inference.ready)

    async def server_metadata(self, request, context):
        return self.v2.ServerMetadataResponse(name="kiln", version=self.manifest.versions.get("kiln", ""),
                                              extensions=EXTENSIONS)

    # -- shared ---------------------------------------------------------------------------------------------
    def _record(self, method: str, code: str, start: float, size: int, context) -> None:
        seconds = time.perf_counter() - start
        self.requests.record(method, code, seconds * 1000, size, context.peer())
        self.inference.metrics.observe("grpc", method, code, seconds)

    async def _call(self, method: str, context, work, size: int):
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        gauge = self.inference.metrics.active
        gauge.inc()
        try:
            return await work
        except Refused as exc:
            code = CODES[exc.kind]
            await context.abort(code, exc.message)
        except Exception as exc:  # a bug, not the client's fault: keep serving
            code = grpc.StatusCode.INTERNAL
            log.exception("internal error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            gauge.dec()
            self._record(method, code.name, start, size, context)

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        v2 = self.v2
        typed = grpc.unary_unary_rpc_method_handler
        raw = None  # no (de)serializer: the handler sees and returns bytes
        v2_methods = {
            "ServerLive": typed(self.server_live, v2.ServerLiveRequest.FromString,
                                v2.ServerLiveResponse.SerializeToString),
            "ServerReady": typed(self.server_ready, v2.ServerReadyRequest.FromString,
                                 v2.ServerReadyResponse.SerializeToString),
            "ModelReady": typed(self.model_ready, v2.ModelReadyRequest.FromString,
                                v2.ModelReadyResponse.SerializeToString),
            "ServerMetadata": typed(self.server_metadata, v2.ServerMetadataRequest.FromString,
                                    v2.ServerMetadataResponse.SerializeToString),
            "ModelMetadata": typed(self.model_metadata, v2.ModelMetadataRequest.FromString,
                                   v2.ModelMetadataResponse.SerializeToString),
            "ModelInfer": typed(self.model_infer, raw, raw),
        }
        if hasattr(v2, "ModelConfigRequest"):  # artifacts published before kiln answered them lack the messages
            v2_methods |= {
                "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer, raw, raw),
                "ModelConfig": typed(self.model_config, v2.ModelConfigRequest.FromString,
                                     v2.ModelConfigResponse.SerializeToString),
                "ModelStatistics": typed(self.model_statistics, v2.ModelStatisticsRequest.FromString,
                                         v2.ModelStatisticsResponse.SerializeToString),
                "RepositoryIndex": typed(self.repository_index, v2.RepositoryIndexRequest.FromString,
                                         v2.RepositoryIndexResponse.SerializeToString),
            }
        else:
            log.warning("this artifact's protocol predates ModelConfig/ModelStatistics (perf_analyzer needs them): "
                        "optimize the program again to serve them")
        handlers = [grpc.method_handlers_generic_handler(protocols.V2_SERVICE_NAME, v2_methods)]
        if self.protocol.service is not None:
            handlers.append(grpc.method_handlers_generic_handler(protocols.SERVICE_NAME, {
                "Predict": typed(self.predict, raw, raw),
                "PredictStream": grpc.stream_stream_rpc_method_handler(self.predict_stream, raw, raw),
            }))
        return handlers


# what ServerMetadata lists: Triton's names for the protocol extensions kiln answers
EXTENSIONS = ["model_configuration", "statistics", "binary_tensor_data"]
