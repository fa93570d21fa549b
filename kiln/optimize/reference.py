"""reference: the unoptimized model in onnxruntime defines the outputs every candidate is compared with.

It also cuts the calibration split off the dataset, so int8 candidates are judged on data they never saw.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kiln.artifact.manifest import RunSettings
from kiln.config import settings
from kiln.errors import DatasetError, ModelError
from kiln.optimize import feeds as feeds_io
from kiln.optimize.isolation import run_isolated
from kiln.optimize.models import CheckedProgram, ReferenceData
from kiln.optimize.scoring import compute_metrics
from kiln.optimize.validate import load_samples
from kiln.program.datasets import Samples, synthetic
from kiln.program.loader import LoadedProgram
from kiln.runtime.runners import open_runner

_log = logging.getLogger("kiln.optimize")


def split_calibration(prog: LoadedProgram, samples: Samples, checked: CheckedProgram
                      ) -> tuple[Samples, Samples | None, str]:
    """(evaluation samples, calibration samples or None, where the calibration data came from).

    A separate `calibration` dataset is used as is; otherwise `calibration_fraction` of the dataset's samples
    (the first ones) are taken out of the evaluation split. Without a dataset there is nothing to calibrate on
    unless the program says synthetic inputs will do."""
    p = prog.program
    if p.calibration is not None:
        return samples, p.calibration.load(prog.root, checked.inputs, bool(p.allow_nonfinite)), p.calibration.describe()
    if p.dataset is None:
        if not p.calibrate_on_synthetic:
            return samples, None, "none (no dataset; set calibrate_on_synthetic = True to use synthetic inputs)"
        return samples, synthetic(checked.inputs, checked.guards, count=p.synthetic_samples, seed=1), "synthetic"
    batch = samples.per_feed
    n_cal = max(batch, int(samples.count * p.calibration_fraction))
    if samples.count - n_cal < batch:
        raise DatasetError(f"has {samples.count} samples, too few to split {p.calibration_fraction:.0%} off for "
                           "calibration and keep some to evaluate on", where=samples.source,
                           hint="add samples, or give the program a separate `calibration` dataset")
    return samples.take(slice(n_cal, None)), samples.take(slice(0, n_cal)), f"first {n_cal} samples of the dataset"


def reference(checked: CheckedProgram, threads: int, calibrate: bool = False,
              log: logging.Logger | logging.LoggerAdapter = _log) -> ReferenceData:
    """Run the baseline on the evaluation split; save feeds, outputs and labels (eval.npz) and, when asked,
    the calibration split (calibration.npz) in the work folder. The user's loaders and metrics run in a
    child process, like everything of the program."""
    ref = run_isolated(compute_reference, checked, threads, calibrate, what="the program's data and metrics",
                       timeout=settings().program_timeout_s,
                       timeout_hint="raise KILN_PROGRAM_TIMEOUT_S if loading its data really takes this long")
    if calibrate:
        log.info("calibration data: %s", ref.calibration_source)
    log.info("reference (onnxruntime) on %d samples in %d feeds: %s", ref.samples, ref.feeds,
             {k: round(v, 6) for k, v in ref.metrics.items()})
    return ref


def compute_reference(checked: CheckedProgram, threads: int, calibrate: bool) -> ReferenceData:
    """reference's work, in the child process."""
    prog = checked.load()
    samples = load_samples(prog, checked.inputs, checked.guards)
    calibration_path, calibration_source = None, None
    if calibrate:
        samples, calib, calibration_source = split_calibration(prog, samples, checked)
        if calib is not None:
            calibration_path = str(checked.work_dir / "calibration.npz")
            feeds_io.save_calibration(Path(calibration_path), feeds_io.feeds(calib, checked.inputs))
    fds = feeds_io.feeds(samples, checked.inputs)
    runner = None
    try:  # the reference must run: a model onnxruntime cannot run on this data is the input's problem
        runner = open_runner("onnxruntime", Path(checked.model_path), checked.inputs, checked.outputs,
                             RunSettings(threads=threads))
        outputs = feeds_io.gather_outputs(feeds_io.run_all(runner.run, fds), samples.count, samples.batch)
    except Exception as exc:
        message = " ".join(str(exc).split())[:400]
        raise ModelError(f"onnxruntime cannot run the model on the data from {samples.source}: {message}",
                         where=checked.model_path,
                         hint="kiln measures every candidate against onnxruntime; check the model and the input "
                              "values (shapes that only the data reveals, out-of-range indices)") from None
    finally:
        if runner:
            runner.close()
    metrics = compute_metrics(prog.program.get_metrics(), outputs, outputs, samples.labels,
                              where=os.path.join(checked.root, "program.py"))
    path = checked.work_dir / "eval.npz"
    feeds_io.save_eval(path, fds, outputs, samples.labels, samples.batch)
    return ReferenceData(path=str(path), samples=samples.count, feeds=len(fds), metrics=metrics,
                         calibration_path=calibration_path, calibration_source=calibration_source)
