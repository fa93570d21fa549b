"""TVM modules whose import is slow for a reason kiln can remove.

`tvm.s_tir.tensor_intrin` (imported by every MetaSchedule TuneContext) parses ~250 TVMScript intrinsics, CUDA's
among them, and TVMScript's `T.prim_func` calls `inspect.stack()` for each: its per-frame source lookups walk every
loaded module (`inspect.getmodule`), 23 s of the first tuning context in a process that has loaded onnx,
onnxruntime and Prefect (2 cores). TVMScript reads only each frame's object, name and locals, and the caller's
source line (is the function defined in a class?), so the import runs with a stack that reads that line from
linecache and nothing else.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_done = False


def _light_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """inspect.stack() with each frame's own line as its code context, without the module lookups."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno)
        frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                        [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def light_stack() -> Iterator[None]:
    """TVMScript parsed inside the block (T.prim_func) without inspect.stack()'s module lookups."""
    with _lock:
        saved = inspect.stack
        inspect.stack = _light_stack
        try:
            yield
        finally:
            inspect.stack = saved


def tensor_intrinsics() -> None:
    """Import tvm.s_tir.tensor_intrin (registering TVM's tensor intrinsics) once, quickly."""
    global _done
    if _done or "tvm.s_tir.tensor_intrin" in sys.modules:
        _done = True
        return
    with light_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401
    _done = True
