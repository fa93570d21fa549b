"""Uploaded programs: a size limit enforced while the body arrives, safe file names, safe unpacking.

Everything lands under one upload folder per submission; an archive is unpacked by kiln.program.archive (no `..`, no
absolute paths, no links, a size limit), so nothing is ever written outside the upload area.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from fastapi import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.errors import ProgramError
from kiln.program.archive import extract, is_archive

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` with 413, before any of it is parsed or
    spooled to disk (Content-Length up front, counted chunks for chunked bodies)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        mb = self.max_bytes / 2**20
        body = f"upload over the {mb:.0f} MiB limit (KILN_WEB_MAX_UPLOAD_MB)".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def safe_name(filename: str | None, default: str) -> str:
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return _SAFE.sub("-", base).strip(".-") or default


def new_area(root: Path) -> Path:
    area = root / uuid.uuid4().hex
    area.mkdir(parents=True)
    return area


async def save(upload: UploadFile, dest: Path) -> Path:
    with open(dest, "wb") as out:
        while chunk := await upload.read(1 << 20):
            out.write(chunk)
    return dest


async def program_from_upload(area: Path, archive: UploadFile | None, model: UploadFile | None,
                              extra: list[UploadFile]) -> Path:
    """The program location for the flow: an unpacked archive's folder, or a folder of the separate files
    (or the bare model when it came alone). Raises ProgramError for what cannot be a program."""
    if archive is not None and archive.filename:
        name = safe_name(archive.filename, "program.zip")
        if not is_archive(Path(name)):
            raise ProgramError(f"{name} is not a .zip or .tar.gz archive", hint="upload the program folder packed")
        saved = await save(archive, area / name)
        try:
            return extract(saved, area, "program")
        finally:
            saved.unlink(missing_ok=True)
    if model is None or not model.filename:
        raise ProgramError("nothing uploaded", hint="choose a program archive, or at least a .onnx model")
    model_name = safe_name(model.filename, "model.onnx")
    if not model_name.lower().endswith(".onnx"):
        raise ProgramError(f"{model_name} is not an .onnx model")
    folder = area / "program"
    folder.mkdir()
    await save(model, folder / model_name)
    files = [f for f in extra if f is not None and f.filename]
    if not files:
        return folder / model_name
    for f in files:
        await save(f, folder / safe_name(f.filename, "file"))
    return folder


def check_bare(program: Path, what: str) -> None:
    """Data and ranges from the form describe a bare model: refuse them beside a program (its program.py says)."""
    if program.suffix.lower() != ".onnx":
        raise ProgramError(f"{what} are for a model uploaded alone (a bare .onnx)",
                           hint="a program declares its dataset and metrics in program.py")


async def data_from_upload(area: Path, data: UploadFile, program: Path) -> Path:
    """The samples for a bare model: a .npz or .parquet saved beside it."""
    check_bare(program, "samples")
    name = safe_name(data.filename, "samples.npz")
    if not name.lower().endswith((".npz", ".parquet")):
        raise ProgramError(f"{name} is neither a .npz nor a .parquet", hint="upload the samples as a .npz of arrays "
                           "keyed by input name (first axis: samples), or a .parquet with one column per input (lists "
                           "for samples of their own lengths)")
    (area / "data").mkdir(exist_ok=True)
    return await save(data, area / "data" / name)


def discard(area: Path) -> None:
    shutil.rmtree(area, ignore_errors=True)
