"""The model's protocol: the program's .proto wrapped into kiln's service, compiled with grpcio-tools.

At publish time `generate` writes into ARTIFACT/protocol/: the user's .proto, the derived service.proto,
the v2 inference protocol, and their Python messages and stubs. The server and the client import them from
there (`load`), so serving never needs protoc or the program's source tree.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import ModuleType

from kiln.checkout import ROOT
from kiln.errors import ArtifactError, ProgramError

TEMPLATES = ROOT / "proto_templates"
SERVICE_PROTO = "kiln_service.proto"
V2_PROTO = "kiln_inference_v2.proto"
SERVICE_NAME = "kiln.Model"
V2_SERVICE_NAME = "inference.GRPCInferenceService"


def _protoc(args: list[str], where: str) -> None:
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = protoc.main(["grpc_tools.protoc", f"-I{include}", *args])
    if code != 0:
        raise ProgramError(f"protoc failed: {err.getvalue().strip() or f'exit code {code}'}", where=where,
                           hint="fix the .proto so that `protoc` accepts it")


def describe(proto: Path) -> dict[str, str]:
    """message short name -> full name of every top-level message in a .proto (compiles it to check)."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        _protoc([f"-I{proto.parent}", f"--descriptor_set_out={out}", proto.name], str(proto))
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    f = fds.file[0]
    prefix = f"{f.package}." if f.package else ""
    return {m.name: prefix + m.name for m in f.message_type}


def check(root: Path, proto: str, request: str, response: str) -> tuple[str, str]:
    """Full names of the request and response messages; ProgramError if the .proto or a name is wrong."""
    messages = describe(root / proto)
    found = []
    for role, name in (("request", request), ("response", response)):
        full = messages.get(name) or next((v for v in messages.values() if v == name), None)
        if full is None:
            raise ProgramError(f"{role} message {name!r} is not defined in {proto}; it defines "
                               f"{sorted(messages) or 'no messages'}", where=str(root / proto))
        found.append(full)
    return found[0], found[1]


@dataclass
class ProtocolInfo:
    service: str | None  # full name of the program's service, None for the generic tensor protocol only
    request: str | None
    response: str | None
    proto: str | None  # the program's .proto file name inside protocol/

    def as_dict(self) -> dict:
        return {"service": self.service, "request": self.request, "response": self.response, "proto": self.proto,
                "v2_service": V2_SERVICE_NAME}


def generate(out: Path, root: Path | None = None, proto: str | None = None, request: str | None = None,
             response: str | None = None) -> ProtocolInfo:
    """Write protocol files and generated Python code into `out` (a folder of the artifact)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TEMPLATES / "inference_v2.proto", out / V2_PROTO)
    files = [V2_PROTO]
    info = ProtocolInfo(service=None, request=None, response=None, proto=None)
    if proto:
        assert root is not None and request and response
        req, resp = check(root, proto, request, response)
        shutil.copy2(root / proto, out / Path(proto).name)
        text = Template((TEMPLATES / "service.proto.tmpl").read_text()).substitute(
            proto_file=Path(proto).name, request=req, response=resp)
        (out / SERVICE_PROTO).write_text(text)
        files += [Path(proto).name, SERVICE_PROTO]
        info = ProtocolInfo(service=SERVICE_NAME, request=req, response=resp, proto=Path(proto).name)
    _protoc([f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}", *files], str(out))
    return info


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


def load(folder: Path, info: dict) -> Protocol:
    """Import the generated modules of an artifact's protocol folder."""
    stem = V2_PROTO[: -len(".proto")]
    if not (folder / f"{stem}_pb2.py").is_file():
        raise ArtifactError("the artifact has no generated protocol code (protocol/)", where=str(folder.parent),
                            hint="it was published by an older kiln: optimize the program again")
    v2, v2_grpc = _module(folder, f"{stem}_pb2"), _module(folder, f"{stem}_pb2_grpc")
    if not info.get("service"):
        return Protocol(v2, v2_grpc, None, None, None, None)
    sstem = SERVICE_PROTO[: -len(".proto")]
    service, service_grpc = _module(folder, f"{sstem}_pb2"), _module(folder, f"{sstem}_pb2_grpc")
    from google.protobuf import message_factory

    pool = service.DESCRIPTOR.pool
    req = message_factory.GetMessageClass(pool.FindMessageTypeByName(info["request"]))
    resp = message_factory.GetMessageClass(pool.FindMessageTypeByName(info["response"]))
    return Protocol(v2, v2_grpc, service, service_grpc, req, resp)
