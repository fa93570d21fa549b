"""The generated protocol code of an artifact (protocol/), imported for the server and the client.

The code was generated at publish time (kiln.optimize.protocol), so serving never needs protoc or the
program's source tree.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from kiln.artifact.layout import SERVICE_NAME, SERVICE_PROTO, V2_PROTO, V2_SERVICE_NAME
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

    v2: ModuleType
    v2_grpc: ModuleType
    service: ModuleType | None
    service_grpc: ModuleType | None
    request_type: type | None
    response_type: type | None


def load(folder: Path, info: ProtocolInfo | None) -> Protocol:
    """Import the generated modules of an artifact's protocol folder."""
    stem = V2_PROTO[: -len(".proto")]
    if not (folder / f"{stem}_pb2.py").is_file():
        raise ArtifactError("the artifact has no generated protocol code (protocol/)", where=str(folder.parent),
                            hint="it was published by an older kiln: optimize the program again")
    v2, v2_grpc = _module(folder, f"{stem}_pb2"), _module(folder, f"{stem}_pb2_grpc")
    if info is None or not info.service:
        return Protocol(v2, v2_grpc, None, None, None, None)
    sstem = SERVICE_PROTO[: -len(".proto")]
    service, service_grpc = _module(folder, f"{sstem}_pb2"), _module(folder, f"{sstem}_pb2_grpc")
    from google.protobuf import message_factory

    pool = service.DESCRIPTOR.pool
    req = message_factory.GetMessageClass(pool.FindMessageTypeByName(info.request))
    resp = message_factory.GetMessageClass(pool.FindMessageTypeByName(info.response))
    return Protocol(v2, v2_grpc, service, service_grpc, req, resp)
