"""`kiln.client.connect(address)`: a typed client for a kiln server.

Message classes come from the artifact's generated code when you pass `artifact=`, otherwise from the
server itself through gRPC reflection, so a client needs nothing but the address.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import descriptor_pool, message_factory

from kiln.artifact.layout import PROTOCOL_DIR
from kiln.artifact.manifest import Manifest
from kiln.artifact.store import resolve
from kiln.serving import protocol as protocols
from kiln.serving import tensors


class Client:
    """Calls `kiln.Model` (the program's protocol) and `inference.GRPCInferenceService` (v2 tensors)."""

    def __init__(self, channel: grpc.Channel, messages: dict[str, type | None], timeout: float | None):
        self.channel = channel
        self.timeout = timeout
        self.Request, self.Response = messages["request"], messages["response"]
        self._v2 = messages
        svc, v2 = protocols.SERVICE_NAME, protocols.V2_SERVICE_NAME
        if self.Request is not None:
            self._predict = channel.unary_unary(f"/{svc}/Predict", request_serializer=self.Request.SerializeToString,
                                                response_deserializer=self.Response.FromString)
            self._stream = channel.stream_stream(f"/{svc}/PredictStream",
                                                 request_serializer=self.Request.SerializeToString,
                                                 response_deserializer=self.Response.FromString)
        self._infer = channel.unary_unary(f"/{v2}/ModelInfer",
                                          request_serializer=messages["ModelInferRequest"].SerializeToString,
                                          response_deserializer=messages["ModelInferResponse"].FromString)
        self._metadata = channel.unary_unary(f"/{v2}/ModelMetadata",
                                             request_serializer=messages["ModelMetadataRequest"].SerializeToString,
                                             response_deserializer=messages["ModelMetadataResponse"].FromString)

    def predict(self, request=None, **fields):
        """One call of the program's Predict; pass a Request or its fields."""
        if self.Request is None:
            raise TypeError("this model has no program protocol; use infer() with tensors")
        return self._predict(request if request is not None else self.Request(**fields), timeout=self.timeout)

    def predict_stream(self, requests: Iterable) -> Iterator:
        return self._stream(iter(requests), timeout=self.timeout)

    def infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """One v2 ModelInfer call with raw tensors."""
        request = self._v2["ModelInferRequest"]()
        tensors.encode_inputs(request, feed)
        for name in outputs or []:
            request.outputs.add().name = name
        return tensors.decode_outputs(self._infer(request, timeout=self.timeout))

    def metadata(self):
        return self._metadata(self._v2["ModelMetadataRequest"](), timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_V2_MESSAGES = ("ModelInferRequest", "ModelInferResponse", "ModelMetadataRequest", "ModelMetadataResponse")


def _messages_from_artifact(folder: Path) -> dict:
    manifest = Manifest.read(folder)
    p = protocols.load(folder / PROTOCOL_DIR, manifest.protocol)
    out = {name: getattr(p.v2, name) for name in _V2_MESSAGES}
    out.update(request=p.request_type, response=p.response_type)
    return out


def _messages_from_reflection(channel: grpc.Channel) -> dict:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    out: dict = {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{n}"))
                 for n in _V2_MESSAGES}
    try:
        method = pool.FindServiceByName(protocols.SERVICE_NAME).FindMethodByName("Predict")
        out.update(request=message_factory.GetMessageClass(method.input_type),
                   response=message_factory.GetMessageClass(method.output_type))
    except KeyError:
        out.update(request=None, response=None)
    return out


def connect(address: str, artifact: str | Path | None = None, timeout: float | None = 30.0,
            ready_timeout: float = 30.0, max_message_mb: float = 16) -> Client:
    """A client for the kiln server at `address` (HOST:PORT), once its channel is ready."""
    limit = int(max_message_mb * (1 << 20))
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", limit),
                                                      ("grpc.max_send_message_length", limit)])
    grpc.channel_ready_future(channel).result(timeout=ready_timeout)
    if artifact is not None:
        messages = _messages_from_artifact(resolve(artifact))
    else:
        messages = _messages_from_reflection(channel)
    return Client(channel, messages, timeout)
