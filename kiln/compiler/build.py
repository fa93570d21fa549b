"""TVM compilation: ONNX -> Relax -> MetaSchedule tuning -> exported `model.so`.

kiln.compiler is the only part of kiln that imports TVM's compiler, and only the flow process loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.artifact.specs import TensorSpec
from kiln.compiler import pipelines
from kiln.compiler.database import count_records, log_size, samples_sent, valid_records
from kiln.compiler.frontend import import_onnx
from kiln.compiler.targets import target_config
from kiln.errors import ModelError

ProgressFn = Callable[[int, int], None]


@dataclass
class CompileResult:
    module: Path
    tasks: int
    trials: int
    tuned_records: int
    seconds: float
    target: dict


@contextlib.contextmanager
def _fds_to(log_file: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (C++ tuning chatter included) to a log file for the duration."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def compile_model(model_path: Path, inputs: list[TensorSpec], *, target_kind: str, trials: int,
                  max_trials_per_task: int | None, db_dir: Path, out: Path,
                  progress: ProgressFn | None = None) -> CompileResult:
    """Tune (continuing from the database in db_dir) and export a loadable library to `out`."""
    import tvm

    start = time.perf_counter()
    tgt_conf = target_config(target_kind)
    target = tvm.target.Target(tgt_conf)
    mod = import_onnx(model_path, inputs)
    try:  # lowering can fail inside TVM on models it imported (an InternalError, not a Python mistake)
        n_tasks = pipelines.count_tasks(mod, target)
    except Exception as exc:
        raise ModelError(f"TVM cannot lower the model: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
                         where=str(model_path), hint="--candidates without tvm skips TVM") from None
    per_task = max_trials_per_task or max(1, -(-trials // max(n_tasks, 1)))
    db_dir.mkdir(parents=True, exist_ok=True)  # MetaSchedule's JSONDatabase needs it to exist
    before = count_records(db_dir)
    log_offset = log_size(db_dir)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            if progress:
                progress(min(samples_sent(db_dir, log_offset), trials), trials)

    watcher = threading.Thread(target=watch, daemon=True)
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)  # console: warnings only; the full log goes to db_dir/logs
    if progress:
        progress(0, trials)
    watcher.start()
    try:
        with _fds_to(db_dir / "tune.log"):
            tuned = pipelines.tuning(target, db_dir, trials, per_task)(mod)
            executable = tvm.compile(tuned, target=target)
            out.parent.mkdir(parents=True, exist_ok=True)
            executable.export_library(str(out))
    except Exception as exc:
        raise ModelError(f"TVM compilation failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
                         hint=f"see {db_dir / 'tune.log'}; --candidates onnxruntime skips TVM") from None
    finally:
        stop.set()
        watcher.join()
    records = count_records(db_dir) - before
    if trials > 0 and records > 0 and valid_records(db_dir, before) == 0:
        raise ModelError(f"all {records} tuning trials failed to build or run, so nothing was tuned",
                         hint=f"see {db_dir / 'tune.log'} and {db_dir / 'logs'}")
    if progress:
        progress(trials, trials)
    return CompileResult(module=out, tasks=n_tasks, trials=trials, tuned_records=records,
                         seconds=time.perf_counter() - start, target=tgt_conf)

