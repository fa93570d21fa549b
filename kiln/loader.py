"""Load a model program from a folder, an archive of one, or a bare .onnx file."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import traceback
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kiln.archive import extract, is_archive
from kiln.datasets import Dataset
from kiln.errors import ProgramError
from kiln.hashing import file_sha256, json_sha256, tree_files
from kiln.metrics import Metric
from kiln.program import ModelProgram

PROGRAM_FILE = "program.py"
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class LoadedProgram:
    """A program ready to use: its folder, the user's ModelProgram instance, and its identity."""

    root: Path
    program: ModelProgram
    model_path: Path
    name: str
    shapes: dict[str, list[int]]
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
        return json_sha256({"files": self.files, "shapes": self.shapes})


def kiln_home() -> Path:
    return Path(os.environ.get("KILN_HOME", Path.home() / ".kiln")).expanduser()


def parse_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """Parse CLI `--shape name=1x3x224x224` items."""
    out: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = [int(d) for d in dims.lower().split("x")]
            if any(d <= 0 for d in out[name]):
                raise ValueError
        except ValueError:
            raise ProgramError(f"cannot read shape {item!r}", hint="write it as NAME=DxDxD, e.g. "
                               "input=1x3x224x224, with positive dimensions") from None
    return out


def clean_name(name: str) -> str:
    """A model name safe as a folder, an S3 key part and an image name: letters, digits, '.', '_', '-'."""
    return _NAME_RE.sub("-", name).strip("-.") or "model"


def localize(location: str) -> str:
    """A program location as a local path: file:// is a path; s3:// is fetched into KILN_HOME/programs/s3."""
    if location.startswith("file://"):
        from urllib.parse import unquote, urlparse

        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            raise ProgramError("file:// URIs must name a local path (file:///path)", where=location)
        return unquote(parsed.path)
    if location.startswith("s3://"):
        from kiln.objectstore import ObjectStore

        return str(ObjectStore().fetch_program(location, kiln_home() / "programs" / "s3"))
    return location


def load_program(location: str | os.PathLike, shapes: dict[str, list[int]] | None = None) -> LoadedProgram:
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
        name = path.stem
        source = path
    else:
        root = path
        program = _import_program(root, program_file) if (root / program_file).is_file() else ModelProgram()
        members = None
        name = getattr(program, "name", None) or root.name
        source = root if program_file == PROGRAM_FILE else root / program_file
    _check_declarations(program, root, program_file)
    merged = {**{k: list(v) for k, v in (program.shapes or {}).items()}, **(shapes or {})}
    return LoadedProgram(root=root, program=program, model_path=(root / program.model).resolve(),
                         name=clean_name(name), shapes=merged, members=members,
                         source=source, program_file=program_file)


def external_data_files(model_path: Path) -> list[str]:
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return []  # validation reports the unreadable model
    names = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return sorted(names)


def _import_program(root: Path, program_file: str = PROGRAM_FILE) -> ModelProgram:
    file = root / program_file
    module_name = f"kiln_program_{json_sha256(str(file))[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(root))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ProgramError(f"syntax error: {exc.msg}", where=f"{exc.filename or file}:{exc.lineno}",
                           hint=(exc.text or "").strip() or None) from None
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
        where = f"{file}:{frames[-1].lineno}" if frames else str(file)
        raise ProgramError(f"importing the program raised {type(exc).__name__}: {exc}", where=where) from None
    finally:
        sys.path.remove(str(root))
        for name, mod in list(sys.modules.items()):  # helpers imported from root must not leak into the next program
            if Path(getattr(mod, "__file__", None) or "/").resolve().is_relative_to(root.resolve()):
                del sys.modules[name]
    sys.modules[module_name] = module
    classes = [v for v in vars(module).values()
               if isinstance(v, type) and issubclass(v, ModelProgram) and v is not ModelProgram
               and v.__module__ == module_name]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise ProgramError(f"must define exactly one subclass of kiln.ModelProgram (found: {found})",
                           where=str(file), hint="class MyProgram(kiln.ModelProgram): ...")
    try:
        return classes[0]()
    except Exception as exc:
        raise ProgramError(f"creating {classes[0].__name__}() raised {type(exc).__name__}: {exc}",
                           where=str(file)) from None


def _check_declarations(program: ModelProgram, root: Path, program_file: str = PROGRAM_FILE) -> None:
    where = str(root / program_file)
    cls = type(program).__name__
    if not isinstance(program.model, str) or not program.model:
        raise ProgramError(f"{cls}.model must name the ONNX file", where=where)
    if not (root / program.model).is_file():
        raise ProgramError(f"model file {program.model!r} not found in the program folder", where=where,
                           hint="set `model = \"FILE.onnx\"` in the program, or add the file")
    if not isinstance(program.shapes, dict) or not all(
        isinstance(v, (list, tuple)) and all(isinstance(d, int) and d > 0 for d in v) for v in program.shapes.values()
    ):
        raise ProgramError(f"{cls}.shapes must map input names to lists of positive ints", where=where)
    if program.dataset is not None and not isinstance(program.dataset, Dataset):
        raise ProgramError(f"{cls}.dataset must be a kiln.Dataset", where=where)
    metrics = program.metrics
    if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, Metric) for m in metrics):
        raise ProgramError(f"{cls}.metrics must be a list of kiln.metrics (top1(...), cosine(...), ...)",
                           where=where)
    names = [m.name for m in metrics]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProgramError(f"metric names must be unique; repeated: {dupes}", where=where,
                           hint="pass name=... to tell them apart")
    if program.proto is not None:
        if not (root / program.proto).is_file():
            raise ProgramError(f"proto file {program.proto!r} not found in the program folder", where=where)
        if not program.request or not program.response:
            raise ProgramError(f"{cls} declares a proto but not both `request` and `response` message names",
                               where=where)
