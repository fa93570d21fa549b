"""The model's protocol, generated at publish time: the program's .proto wrapped into kiln's service and
compiled with grpcio-tools.

`generate` writes into ARTIFACT/protocol/: the user's .proto, the derived service.proto, the v2 inference
protocol, and their Python messages and stubs, which kiln.serving.protocol imports at serve time.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from string import Template

from kiln.artifact.layout import SERVICE_NAME, SERVICE_PROTO, V2_DESCRIPTORS, V2_PROTO
from kiln.artifact.manifest import ProtocolInfo
from kiln.errors import ProgramError
from kiln.fs import ROOT

TEMPLATES = ROOT / "proto_templates"


def _protoc(args: list[str], where: str) -> None:
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")
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
    _protoc([f"-I{out}", f"--descriptor_set_out={out / V2_DESCRIPTORS}", V2_PROTO], str(out))
    return info
