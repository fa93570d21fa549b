"""TVM compilation: ONNX -> Relax -> MetaSchedule tuning -> exported `model.so`.

The steps are named data (like TVM's relax/pipeline.py); this module is the only one that imports TVM's
compiler, and only the flow process loads it. Facts it relies on (FACTS.md): tuning needs
`max_trials_per_task` or the first task takes the whole budget; `total_trials=0` with an existing database
re-applies it; target strings are gone, targets are dicts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

from kiln.errors import ModelError
from kiln.specs import TensorSpec

DB_FILES = ("database_workload.json", "database_tuning_record.json")
ProgressFn = Callable[[int, int], None]


def target_config(kind: str) -> dict:
    """The target dict for `kind` on this machine (llvm: the host CPU and all its cores)."""
    if kind == "llvm":
        import tvm

        return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}
    if kind == "cuda":
        return {"kind": "cuda", "arch": os.environ.get("KILN_CUDA_ARCH", "sm_90a"), "max_threads_per_block": 1024,
                "max_shared_memory_per_block": 49152, "thread_warp_size": 32, "max_num_threads": 1024,
                "host": {"kind": "llvm"}}
    raise ModelError(f"unknown target {kind!r}", hint="use --target llvm or --target cuda")


def device_for(kind: str) -> str:
    """The runtime device a module compiled for target `kind` runs on (the runners' `device` setting)."""
    return "cuda" if kind == "cuda" else "cpu"


def supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map())


@dataclass
class CompileResult:
    module: Path
    tasks: int
    trials: int
    tuned_records: int
    seconds: float
    target: dict


def import_onnx(model_path: Path, inputs: list[TensorSpec]):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(model_path))
    try:
        return from_onnx(model, {s.name: s.shape for s in inputs}, {s.name: s.dtype for s in inputs},
                         keep_params_in_input=False)
    except Exception as exc:
        raise ModelError(f"TVM's ONNX importer failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
                         where=str(model_path), hint="try --candidates onnxruntime to skip the TVM candidate") from None


def _lowering():
    """The passes before tuning: the same prefix as relax's static_shape_tuning pipeline."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                     relax.transform.CanonicalizeBindings(), relax.pipeline.zero_pipeline()])


def count_tasks(mod, target) -> int:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    with tvm.target.Target(target):
        lowered = _lowering()(mod)
    return len(ms.relax_integration.extract_tasks(lowered, target))


FAILED_RUN_SECS = 1e9  # MetaSchedule records a build/run failure as 1e10 seconds


def _valid_records(db_dir: Path, skip: int) -> int:
    """How many records after the first `skip` hold a real measurement (not a failed build or run)."""
    valid = 0
    try:
        with open(db_dir / DB_FILES[1]) as f:
            for i, line in enumerate(f):
                if i >= skip:
                    secs = json.loads(line)[1][1]
                    valid += bool(secs) and min(secs) < FAILED_RUN_SECS
    except (OSError, ValueError, IndexError, TypeError):
        return 0
    return valid


SCHEDULER_LOG = "logs/tvm.s_tir.meta_schedule.logging.task_scheduler.log"
_SENT = re.compile(rb"Sending (\d+) sample\(s\) to builder")


def _samples_sent(db_dir: Path, offset: int) -> int:
    """Trials handed to the builder so far, read from the scheduler log past `offset` (live, unlike the
    database, which MetaSchedule fills only when it joins a task's results on its next visit)."""
    try:
        with open(db_dir / SCHEDULER_LOG, "rb") as f:
            f.seek(offset)
            return sum(int(m) for m in _SENT.findall(f.read()))
    except OSError:
        return 0


def _log_size(db_dir: Path) -> int:
    try:
        return (db_dir / SCHEDULER_LOG).stat().st_size
    except OSError:
        return 0


def _count_records(db_dir: Path) -> int:
    try:
        with open(db_dir / DB_FILES[1], "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


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
    from tvm import relax

    start = time.perf_counter()
    tgt_conf = target_config(target_kind)
    target = tvm.target.Target(tgt_conf)
    mod = import_onnx(model_path, inputs)
    n_tasks = count_tasks(mod, target)
    per_task = max_trials_per_task or max(1, -(-trials // max(n_tasks, 1)))
    db_dir.mkdir(parents=True, exist_ok=True)  # JSONDatabase needs it to exist (FACTS.md)
    before = _count_records(db_dir)
    log_offset = _log_size(db_dir)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            if progress:
                progress(min(_samples_sent(db_dir, log_offset), trials), trials)

    watcher = threading.Thread(target=watch, daemon=True)
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)  # console: warnings only; the full log goes to db_dir/logs
    if progress:
        progress(0, trials)
    watcher.start()
    try:
        with _fds_to(db_dir / "tune.log"):
            pipeline = relax.get_pipeline("static_shape_tuning", target=target, work_dir=str(db_dir),
                                          total_trials=trials, max_trials_per_task=per_task)
            tuned = pipeline(mod)
            executable = tvm.compile(tuned, target=target)
            out.parent.mkdir(parents=True, exist_ok=True)
            executable.export_library(str(out))
    except Exception as exc:
        raise ModelError(f"TVM compilation failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
                         hint=f"see {db_dir / 'tune.log'}; --candidates onnxruntime skips TVM") from None
    finally:
        stop.set()
        watcher.join()
    records = _count_records(db_dir) - before
    if trials > 0 and records > 0 and _valid_records(db_dir, before) == 0:
        raise ModelError(f"all {records} tuning trials failed to build or run, so nothing was tuned",
                         hint=f"see {db_dir / 'tune.log'} and {db_dir / 'logs'}")
    if progress:
        progress(trials, trials)
    return CompileResult(module=out, tasks=n_tasks, trials=trials, tuned_records=records,
                         seconds=time.perf_counter() - start, target=tgt_conf)

