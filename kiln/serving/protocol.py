"""The generated protocol code of an artifact (protocol/), imported for the server and the client.

The code was generated at publish time (kiln.optimize.protocol), so serving never needs protoc or the
program's source tree. Clients build the v2 messages from the artifact's compiled descriptors in a descriptor
pool of their own: they share the package `inference` with Triton's, so importing them into the process-wide
pool beside tritonclient.grpc (a user's script, a test) failed with "duplicate symbol 'inference.DataType'".
The server imports them into the process-wide pool, where gRPC reflection finds them.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

from kiln.artifact.layout import SERVICE_NAME, SERVICE_PROTO, V2_DESCRIPTORS, V2_PROTO, V2_SERVICE_NAME
from kiln.artifact.manifest import ProtocolInfo
from kiln.errors import ArtifactError

__all__ = ["SERVICE_NAME", "V2_SERVICE_NAME", "Protocol", "load"]


def _module(folder: Path, name: str) -> ModuleType:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(name)


@dataclass
class Protocol:
    """Imported generated code of one artifact."""

    v2: ModuleType | SimpleNamespace  # the v2 message classes by name
    service: ModuleType | None
    service_grpc: ModuleType | None
    request_type: type | None
    response_type: type | None


def _v2_messages(path: Path) -> SimpleNamespace:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(f)
    types = pool.FindFileByName(files[-1].name).message_types_by_name
    return SimpleNamespace(**{name: message_factory.GetMessageClass(d) for name, d in types.items()})


def load(folder: Path, info: ProtocolInfo | None, own_pool: bool = True) -> Protocol:
    """The message classes of an artifact's protocol folder (v2 in a pool of their own unless not `own_pool`)."""
    stem = V2_PROTO[: -len(".proto")]
    if own_pool and (folder / V2_DESCRIPTORS).is_file():
        v2 = _v2_messages(folder / V2_DESCRIPTORS)
    elif (folder / f"{stem}_pb2.py").is_file():  # published before the descriptors were kept
        v2 = _module(folder, f"{stem}_pb2")
    else:
        raise ArtifactError("the artifact has no generated protocol code (protocol/)", where=str(folder.parent),
                            hint="it was published by an older kiln: optimize the program again")
    if info is None or not info.service:
        return Protocol(v2, None, None, None, None)
    sstem = SERVICE_PROTO[: -len(".proto")]
    service, service_grpc = _module(folder, f"{sstem}_pb2"), _module(folder, f"{sstem}_pb2_grpc")
    from google.protobuf import message_factory

    pool = service.DESCRIPTOR.pool
    req = message_factory.GetMessageClass(pool.FindMessageTypeByName(info.request))
    resp = message_factory.GetMessageClass(pool.FindMessageTypeByName(info.response))
    return Protocol(v2, service, service_grpc, req, resp)
