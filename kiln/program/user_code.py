"""The user's program.py: imported in isolation, its one ModelProgram subclass instantiated, its declarations
checked. The serving runtime uses this to run the mapping code, so it imports nothing of onnx or the optimizer."""

from __future__ import annotations

import contextlib
import faulthandler
import importlib.util
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from kiln.config import env_name, settings
from kiln.errors import ProgramError
from kiln.fs import json_sha256
from kiln.program.datasets import Dataset
from kiln.program.metrics import Metric
from kiln.program.model_program import ModelProgram
from kiln.program.naming import parse_dims

PROGRAM_FILE = "program.py"


def import_program(root: Path, program_file: str = PROGRAM_FILE) -> ModelProgram:
    file = root / program_file
    module_name = f"kiln_program_{json_sha256(str(file))[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(root))
    limit = settings().program_import_timeout_s
    try:
        with _time_limit(limit):
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ProgramError(f"syntax error: {exc.msg}", where=f"{exc.filename or file}:{exc.lineno}",
                           hint=(exc.text or "").strip() or None) from None
    except _ImportTimeout as exc:
        raise ProgramError(f"importing {program_file} did not finish within {limit:g} s "
                           f"({env_name('program_import_timeout_s')})", where=_where(exc, file),
                           hint=f"{program_file} should only define its ModelProgram when imported: move slow work "
                                "(loading data, downloads, training) into a Dataset loader, which "
                                f"{env_name('program_timeout_s')} limits; or raise "
                                f"{env_name('program_import_timeout_s')} if its imports really take this long") \
            from None
    except Exception as exc:
        raise ProgramError(f"importing the program raised {_describe(exc)}", where=_where(exc, file)) from None
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


class _ImportTimeout(BaseException):
    """Raised into program.py when its import runs out of time; a BaseException, so that the program's own
    `except Exception:` cannot swallow it."""


BACKSTOP_S = 15.0  # after the limit: time for the alarm's exception to unwind before the process is ended


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Stop the block after `seconds` (SIGALRM raises _ImportTimeout where it is), so a program.py that loops at
    import fails in a minute with its own message instead of using up the whole KILN_PROGRAM_TIMEOUT_S.

    User code runs in a child process's main thread (kiln.optimize.isolation), where signals can be used; in any
    other thread, or under an outer alarm that comes sooner (pytest-timeout's), the block runs unlimited here.
    Code that never returns to Python (a C loop holding the GIL) or swallows BaseException is ended by
    faulthandler's watchdog thread BACKSTOP_S later: it shows where it was stuck and exits the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_delay and outer_delay <= seconds:
        yield
        return

    def expire(signum, frame):
        raise _ImportTimeout()

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    with contextlib.suppress(ValueError, OSError):  # fd 2 is what a process's stderr is, whatever sys.stderr is
        faulthandler.dump_traceback_later(seconds + BACKSTOP_S, exit=True, file=2)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # give the outer alarm back what is left of it
            left = max(outer_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _where(exc: BaseException, file: Path) -> str:
    """`file:line` of the program's innermost frame in the traceback (where it raised, or where it was stopped)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
    return f"{file}:{frames[-1].lineno}" if frames else str(file)


def _describe(exc: Exception) -> str:
    """`Type: message`; a pydantic error (a metric's impossible range, a bad Dataset) by its first message."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        return f"{exc.title}: {field + ': ' if field else ''}{first['msg'].removeprefix('Value error, ')}"
    return f"{type(exc).__name__}: {exc}"


BUILDERS = ("train.py", "prepare.py", "make_model.py")  # the scripts kiln's examples build their model with


def _missing_model_hint(root: Path) -> str:
    """How to get the model a program folder lacks: kiln's examples build theirs with a script beside the
    program (git ignores the .onnx), which `make examples` runs in a checkout for those its target lists."""
    script = next((root / b for b in BUILDERS if (root / b).is_file()), None)
    if script is None:
        return "set `model = \"FILE.onnx\"` in the program, or add the file"
    try:
        shown = script.relative_to(Path.cwd())
    except ValueError:
        shown = script
    makefile = root.parent.parent / "Makefile"
    listed = root.parent.name == "examples" and makefile.is_file() and any(
        line.startswith("examples:") and f"examples/{root.name}/" in line
        for line in makefile.read_text(errors="replace").splitlines())
    if listed:
        return f"this folder builds its model with {script.name}: run `make examples` first (or `python {shown}`)"
    return f"this folder builds its model with {script.name}: run `python {shown}` first"


def check_declarations(program: ModelProgram, root: Path, program_file: str = PROGRAM_FILE) -> None:
    where = str(root / program_file)
    cls = type(program).__name__
    if not isinstance(program.model, str) or not program.model:
        raise ProgramError(f"{cls}.model must name the ONNX file", where=where)
    if not (root / program.model).is_file():
        raise ProgramError(f"model file {program.model!r} not found in the program folder", where=where,
                           hint=_missing_model_hint(root))
    if not isinstance(program.shapes, dict) or not all(
        isinstance(v, (list, tuple)) and all(isinstance(d, int) and d > 0 for d in v) for v in program.shapes.values()
    ):
        raise ProgramError(f"{cls}.shapes must map input names to lists of positive ints", where=where)
    if not isinstance(program.dims, dict):
        raise ProgramError(f"{cls}.dims must map dimension names to (LOW, HIGH) ranges", where=where,
                           hint='e.g. dims = {"sequence_length": (1, 128)}')
    try:
        parse_dims(dict(program.dims))
    except ProgramError as exc:
        raise ProgramError(f"{cls}.dims: {exc.message}", where=where, hint=exc.hint) from None
    if not isinstance(program.padding, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in program.padding.items()):
        raise ProgramError(f"{cls}.padding must map input names to pad values", where=where,
                           hint='e.g. padding = {"input_ids": 0, "attention_mask": 0}')
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
