"""Child processes for everything that may crash, hang or exit: the user's program (its import, dataset
loaders, metrics) and each candidate's build and evaluation.

A child is forked from a forkserver (started once per run, single-threaded, numpy/onnx/onnxruntime already
imported), so it starts in milliseconds without inheriting the flow's threads. It dies with its parent
(PR_SET_PDEATHSIG), so SIGKILL to `kiln optimize` or a cancelled flow run leaves nothing behind; SIGTERM and
SIGINT end it at once through `terminate_children`. What the child returns or raises comes back pickled;
a timeout, a `sys.exit`, a signal (SIGSEGV, SIGKILL from the memory limit) or a lost connection become an
`IsolationError` that says which.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kiln.config import environment
from kiln.errors import KilnError

T = TypeVar("T")
_PRELOAD = ["numpy", "onnx", "onnxruntime", "pydantic", "kiln.optimize.models", "kiln.program.loader"]
_children: set[multiprocessing.process.BaseProcess] = set()
_lock = threading.Lock()
_context: Any = None


class IsolationError(KilnError):
    """A child process did not return: it timed out, exited, or was killed by a signal."""


def _ctx():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


def preload(*modules: str) -> None:
    """Have the forkserver import `modules` too, so that children do not each import them (TVM: ~1 s per
    child). Takes effect only before the first child of this process; later calls change nothing."""
    if _context is None:
        _PRELOAD.extend(m for m in modules if m not in _PRELOAD)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child(conn, fn: Callable[..., Any], args: tuple, kwargs: dict, memory_mb: float | None,
           env: dict[str, str]) -> None:
    _die_with_parent()
    with contextlib.suppress(OSError):  # libraries print (onnxruntime's quantizer does): stdout is the CLI's
        os.dup2(2, 1)
    os.environ.clear()  # the caller's environment now, not the forkserver's from when it started
    os.environ.update(env)
    logging.getLogger().addHandler(logging.NullHandler())  # libraries' warnings (the quantizer's) stay quiet
    if memory_mb:
        limit = int(memory_mb * (1 << 20))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except SystemExit as exc:  # user code calling sys.exit(): say so rather than vanish
        conn.send(("exit", exc.code))
    except MemoryError:
        conn.send(("memory", None))
    except BaseException as exc:
        try:
            conn.send(("error", exc))
        except Exception:  # an exception that does not pickle travels as text
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., T], *args: Any, what: str, timeout: float | None = None,
                 memory_mb: float | None = None, timeout_hint: str | None = None, **kwargs: Any) -> T:
    """fn(*args, **kwargs) in a child process; its result, its own exception, or an IsolationError naming
    `what` (e.g. "the program", "candidate ort-int8-static") and how it ended (`timeout_hint` for a timeout)."""
    ctx = _ctx()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(sender, fn, args, kwargs, memory_mb, environment()), daemon=True)
    with _lock:
        proc.start()
        _children.add(proc)
    sender.close()
    try:
        if not receiver.poll(timeout):
            proc.kill()
            raise IsolationError(f"{what} did not finish within {timeout:g} s", hint=timeout_hint)
        try:
            status, value = receiver.recv()
        except EOFError:  # the child died without a word: a signal, or os._exit
            proc.join(5)
            raise IsolationError(f"{what} {ended(proc.exitcode)}") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        with _lock:
            _children.discard(proc)
        receiver.close()
    if status == "ok":
        return value
    if status == "exit":
        raise IsolationError(f"{what} called sys.exit({value!r})",
                             hint="a program must not exit the process; raise an exception with a message instead")
    if status == "memory":
        raise IsolationError(f"{what} ran out of memory" + (f" (limit {memory_mb:g} MiB)" if memory_mb else ""),
                             hint="KILN_CANDIDATE_MEMORY_MB sets the limit" if memory_mb else None)
    raise value


def ended(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        why = " (the memory limit or the system's OOM killer)" if name == "SIGKILL" else ""
        return f"was killed by {name}{why}"
    return f"exited with code {code} without a result"


def terminate_children() -> None:
    """Kill every child now (SIGTERM/SIGINT to the run: end within seconds, leave nothing running)."""
    with _lock:
        for proc in list(_children):
            with contextlib.suppress(Exception):
                os.kill(proc.pid, signal.SIGKILL)
