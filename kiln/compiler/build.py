"""TVM compilation: ONNX -> Relax -> MetaSchedule tuning -> exported `model.so`.

kiln.compiler is the only part of kiln that imports TVM's compiler, and only the flow process loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.artifact.specs import TensorSpec
from kiln.artifact.target import Target
from kiln.compiler import passes, pipelines, shared_db, trial_costs, tuning
from kiln.compiler.frontend import import_onnx
from kiln.compiler.targets import resolve, target_config
from kiln.compiler.tuning import Limits, Progress
from kiln.errors import DeviceError, ModelError

ProgressFn = Callable[[Progress], None]


@dataclass
class CompileResult:
    module: Path
    tuning: Progress
    seconds: float
    target: dict
    passes: list[str]  # kiln's graph passes that changed the model (kiln.compiler.passes)
    int8: object | None = None  # kiln.compiler.int8.qdq.Rewrites: the quantized matmuls lowered, and those not


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


def compile_model(model_path: Path, inputs: list[TensorSpec], *, target: Target | str, limits: Limits, db_dir: Path,
                  out: Path, progress: ProgressFn | None = None, shared_root: Path | None = None,
                  graph_passes: tuple[str, ...] = passes.DEFAULT,
                  log: logging.Logger | logging.LoggerAdapter | None = None) -> CompileResult:
    """Tune (continuing from the database in db_dir) within `limits` and export a loadable library to `out`.

    shared_root: where the per-CPU shared databases live (kiln.compiler.shared_db); None: this model only."""
    import tvm

    start = time.perf_counter()
    resolved = resolve(target) if isinstance(target, str) else target
    cpu = resolved.kind == "llvm"
    tgt_conf = target_config(resolved)
    target = tvm.target.Target(tgt_conf)
    lowered, passes_applied, rewrites = _lowered(model_path, inputs, target, limits, graph_passes, cpu)
    db_dir.mkdir(parents=True, exist_ok=True)  # MetaSchedule's JSONDatabase needs it to exist
    shared = _shared_folder(shared_root, resolved, limits) if cpu else None  # a GPU's records: another fingerprint
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)  # console: warnings only; the full log goes to db_dir/logs
    try:
        planned = tuning.plan(lowered, target, db_dir, limits, shared)
        if planned.progress.budget_warning:  # before tuning starts, while the console is still the console
            (log or logging.getLogger("kiln.compiler")).warning("TVM tuning: %s", planned.progress.budget_warning)
        with _fds_to(db_dir / "tune.log"):
            tuned = tuning.run(planned, progress)
            with target:
                applied = pipelines.applying(db_dir, limits.prepack and cpu)(lowered)
            executable = tvm.compile(applied, target=target)
            out.parent.mkdir(parents=True, exist_ok=True)
            executable.export_library(str(out))
    except Exception as exc:
        raise ModelError(f"TVM compilation failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
                         hint=f"see {db_dir / 'tune.log'}; --candidates onnxruntime skips TVM") from None
    if tuned.devices_lost:
        raise DeviceError(f"TVM tuning stopped: {tuned.devices_lost} ({tuned.device_failed} trial(s) failed on the "
                          "device side)", hint="start a device on the target machine: python -m kiln.device "
                                               f"--tracker {limits.rpc.host}:{limits.rpc.port} --key {limits.rpc.key}")
    if tuned.trials and tuned.failed == tuned.trials:
        raise ModelError(f"all {tuned.trials} tuning trials failed, so nothing was tuned: "
                         f"{next((t.first_error for t in tuned.tasks if t.first_error), '?')} (raise "
                         "KILN_TUNE_BUILDER_TIMEOUT_S / KILN_TUNE_RUNNER_TIMEOUT_S if they timed out)",
                         hint=f"see {db_dir / 'logs'}")
    return CompileResult(module=out, tuning=tuned, seconds=time.perf_counter() - start, target=tgt_conf,
                         passes=passes_applied, int8=rewrites)


def _lowered(model_path: Path, inputs: list[TensorSpec], target, limits: Limits, graph_passes: tuple[str, ...],
             cpu: bool):
    """(the lowered Relax module tuning extracts its tasks from, kiln's passes applied, the int8 rewrites)."""
    mod = import_onnx(model_path, inputs)
    rewrites = None
    try:  # lowering can fail inside TVM on models it imported (an InternalError, not a Python mistake)
        with target:
            if limits.int8:  # before the graph passes, which rewrite the matmuls it looks for
                mod, rewrites = lower_int8(mod, limits.int8, "fuse-dynamic-quantize" in graph_passes)
            mod, passes_applied = passes.apply(mod, graph_passes)  # NotApplicable: nothing to approximate
            if rewrites:
                passes_applied[:0] = [f"int8-{limits.int8}"] + (["channels-last"] if rewrites.channels_last else []) \
                    + (["fuse-dynamic-quantize"] if rewrites.quantize_fused else [])
            lowered = pipelines.lowering()(mod)
            if limits.prepack and cpu:
                lowered = pipelines.prepacking()(lowered)
    except passes.NotApplicable:
        raise
    except Exception as exc:
        raise ModelError(f"TVM cannot lower the model: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
                         where=str(model_path), hint="--candidates without tvm skips TVM") from None
    return lowered, passes_applied, rewrites


def _shared_folder(shared_root: Path | None, resolved: Target, limits: Limits, create: bool = True) -> Path | None:
    """This CPU's (the target's) shared database folder; made, fingerprint and all, only where `create`."""
    if shared_root is None:
        return None
    print_ = shared_db.fingerprint(resolved, cores=resolved.cores,
                                   host_mcpu=limits.rpc.measured_on if limits.rpc else None)
    return shared_db.ensure(shared_root, print_) if create else shared_db.folder_for(shared_root, print_)


def first_round_need(model_path: Path, inputs: list[TensorSpec], *, target: Target | str, limits: Limits,
                     shared_root: Path | None = None, graph_passes: tuple[str, ...] = passes.DEFAULT
                     ) -> tuple[int, float]:
    """(the tuning tasks of the model at these inputs, the seconds a first round of MIN_FIRST_ROUND trials each
    takes on this CPU, from its measured trial costs, else the defaults): what a time budget must afford per
    static build before more builds (shape buckets) are worth tuning."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    resolved = resolve(target) if isinstance(target, str) else target
    tvm_target = tvm.target.Target(target_config(resolved))
    cpu = resolved.kind == "llvm"
    lowered, _, _ = _lowered(model_path, inputs, tvm_target, limits, graph_passes, cpu)
    tasks = len(ms.relax_integration.extract_tasks(lowered, tvm_target))
    costs = trial_costs.load(_shared_folder(shared_root, resolved, limits, create=False) if cpu else None)
    return tasks, costs.first_round_seconds(tasks, trial_costs.MIN_FIRST_ROUND)


def lower_int8(mod, intrinsic: str, fuse_quantize: bool = True):
    """kiln's QDQ-to-integer pass (kiln.compiler.int8.qdq) for `intrinsic`, with each dynamic quantization as one
    kernel where `fuse_quantize`; NotApplicable when the model has no quantized matmul it can lower (a candidate
    to skip, with the reasons)."""
    from kiln.compiler.int8 import qdq
    from kiln.compiler.int8.intrinsics import registered

    mod, rewrites = qdq.rewrite(mod, registered(intrinsic), fuse_quantize=fuse_quantize)
    if not rewrites.rewritten:
        why = "; ".join(rewrites.skipped[:3]) or "no dequantize -> matmul or MatMulInteger in the graph"
        raise passes.NotApplicable(f"no quantized matmul to lower to integer arithmetic ({why})")
    return mod, rewrites
