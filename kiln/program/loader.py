"""Load a model program from a folder, a program .py in one, an archive of one, or a bare .onnx file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from kiln.config import kiln_home
from kiln.errors import ProgramError
from kiln.fs import file_sha256, json_sha256, tree_files
from kiln.program.archive import extract, is_archive
from kiln.program.external_data import external_data_files
from kiln.program.generated import default_name
from kiln.program.model_program import ModelProgram
from kiln.program.naming import clean_name, parse_dims
from kiln.program.user_code import PROGRAM_FILE, check_declarations, import_program


@dataclass
class LoadedProgram:
    """A program ready to use: its folder, the user's ModelProgram instance, and its identity."""

    root: Path
    program: ModelProgram
    model_path: Path
    name: str
    shapes: dict[str, list[int]]
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)
    members: list[str] | None = None  # the program's files relative to root; None = the whole folder
    source: Path | None = None  # what load_program() takes to load it again (folder, .py or bare .onnx)
    program_file: str | None = None  # the program's .py inside root (program.py unless a .py was given)

    @cached_property
    def files(self) -> dict[str, str]:
        """relative path -> sha256, hashed only when asked (tasks that just reload the program never do)."""
        if self.members is None:
            return tree_files(self.root)
        return {f: file_sha256(self.root / f) for f in self.members}

    @property
    def sha256(self) -> str:
        return json_sha256({"files": self.files, "shapes": self.shapes,
                            **({"dims": {k: list(v) for k, v in self.dims.items()}} if self.dims else {})})


def load_program(location: str | os.PathLike, shapes: dict[str, list[int]] | None = None,
                 dims: dict[str, tuple[int, int]] | None = None) -> LoadedProgram:
    """Resolve `location` to a LoadedProgram; raise ProgramError with file:line on any mistake."""
    path = Path(location).expanduser()
    if not path.exists():
        raise ProgramError("no such file or folder", where=str(location),
                           hint="give a program folder, a .zip/.tar.gz of one, or a .onnx file")
    path = path.resolve()
    if path.is_file() and is_archive(path):
        path = extract(path, kiln_home() / "programs", file_sha256(path)[:24])
    program_file = PROGRAM_FILE
    if path.is_file() and path.suffix == ".py":  # one of several programs in a folder
        program_file, path = path.name, path.parent
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise ProgramError("not a model program", where=str(location),
                               hint="give a program folder, a program .py in one, a .zip/.tar.gz, or a .onnx file")
        program: ModelProgram = type("DefaultProgram", (ModelProgram,), {"model": path.name})()
        root = path.parent
        members: list[str] | None = [path.name, *external_data_files(path)]
        name = default_name(path)
        source = path
    else:
        root = path
        program = import_program(root, program_file) if (root / program_file).is_file() else ModelProgram()
        members = None
        name = getattr(program, "name", None) or root.name
        source = root if program_file == PROGRAM_FILE else root / program_file
    check_declarations(program, root, program_file)
    merged = {**{k: list(v) for k, v in (program.shapes or {}).items()}, **(shapes or {})}
    return LoadedProgram(root=root, program=program, model_path=(root / program.model).resolve(),
                         name=clean_name(name), shapes=merged, members=members,
                         dims={**parse_dims(dict(program.dims or {})), **(dims or {})},
                         source=source, program_file=program_file)
