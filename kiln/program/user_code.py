"""The user's program.py: imported in isolation, its one ModelProgram subclass instantiated, its declarations
checked. The serving runtime uses this to run the mapping code, so it imports nothing of onnx or the optimizer."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from kiln.errors import ProgramError
from kiln.fs import json_sha256
from kiln.program.datasets import Dataset
from kiln.program.metrics import Metric
from kiln.program.model_program import ModelProgram

PROGRAM_FILE = "program.py"


def import_program(root: Path, program_file: str = PROGRAM_FILE) -> ModelProgram:
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
        raise ProgramError(f"importing the program raised {_describe(exc)}", where=where) from None
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


def _describe(exc: Exception) -> str:
    """`Type: message`; a pydantic error (a metric's impossible range, a bad Dataset) by its first message."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        return f"{exc.title}: {field + ': ' if field else ''}{first['msg'].removeprefix('Value error, ')}"
    return f"{type(exc).__name__}: {exc}"


def check_declarations(program: ModelProgram, root: Path, program_file: str = PROGRAM_FILE) -> None:
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
    reqs = program.requirements
    if not isinstance(reqs, (list, tuple)) or not all(isinstance(r, str) and r.strip() for r in reqs):
        raise ProgramError(f"{cls}.requirements must be a list of pip requirement strings", where=where,
                           hint='e.g. requirements = ["tokenizers==0.21.1"]')
    if program.proto is not None:
        if not (root / program.proto).is_file():
            raise ProgramError(f"proto file {program.proto!r} not found in the program folder", where=where)
        if not program.request or not program.response:
            raise ProgramError(f"{cls} declares a proto but not both `request` and `response` message names",
                               where=where)


def load_user_program(file: Path) -> ModelProgram:
    """The checked ModelProgram of one program .py (what a server needs for the mapping code)."""
    program = import_program(file.parent, file.name)
    check_declarations(program, file.parent, file.name)
    return program
