"""reference: the unoptimized model in onnxruntime defines the outputs every candidate is compared with.

It also cuts the calibration split off the dataset, so int8 candidates are judged on data they never saw, and
a held-out share off the evaluation split, so the winner's accuracy is reported on data that chose nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from kiln.artifact.manifest import RunSettings
from kiln.config import settings
from kiln.errors import DatasetError, ModelError
from kiln.optimize import feeds as feeds_io
from kiln.optimize.defaults import HELD_OUT_FRACTION, MIN_SELECTION_FEEDS
from kiln.optimize.isolation import run_isolated
from kiln.optimize.models import CheckedProgram, ReferenceData
from kiln.optimize.scoring import compute_metrics
from kiln.optimize.validate import load_samples
from kiln.program import ragged
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
        return samples, synthetic(checked.inputs, checked.guards, count=p.synthetic_samples, seed=1,
                                  profile=checked.profile), "synthetic"
    batch = samples.per_feed
    n_cal = max(batch, int(samples.count * p.calibration_fraction))
    if samples.count - n_cal < batch:
        raise DatasetError(f"has {samples.count} samples, too few to split {p.calibration_fraction:.0%} off for "
                           "calibration and keep some to evaluate on", where=samples.source,
                           hint="add samples, or give the program a separate `calibration` dataset")
    return samples.take(slice(n_cal, None)), samples.take(slice(0, n_cal)), f"first {n_cal} samples of the dataset"


def split_held_out(samples: Samples, fraction: float = HELD_OUT_FRACTION) -> tuple[Samples, Samples | None]:
    """(selection samples, held-out samples or None): `fraction` of the feeds, drawn at random (seed 0) so that
    a dataset sorted by class or length gives both splits alike; none when the selection would keep fewer than
    MIN_SELECTION_FEEDS feeds."""
    per = samples.per_feed
    feeds = samples.count // per
    held = int(feeds * fraction)
    if held < 1 or feeds - held < MIN_SELECTION_FEEDS:
        return samples, None
    chosen = np.sort(np.random.default_rng(0).permutation(samples.count)[: held * per])
    return samples.take(np.setdiff1d(np.arange(samples.count), chosen)), samples.take(chosen)


def check_finite(splits: list[tuple[dict[str, np.ndarray], Samples]], checked: CheckedProgram) -> None:
    """Stop when the reference's own outputs hold NaN/Inf (inputs outside the model's domain, such as synthetic
    N(0, 1) values fed to atanh): every candidate, the baseline included, would be judged against values that
    mean nothing, and the gate's hint to widen the ranges would point the wrong way. `splits` pairs each
    split's outputs with its samples, so the message names the sample by its position in the user's data."""
    found: dict[str, tuple[int, int]] = {}  # output -> (how many NaN/Inf values, first sample)
    for outputs, samples in splits:
        positions = samples.positions
        for name, arr in outputs.items():
            if ragged.is_ragged(arr):  # samples of their own shapes: one verdict per sample
                parts = ragged.samples(arr)
                flags = np.array([p.dtype.kind in "fc" and not np.isfinite(p).all() for p in parts])
                if flags.any():
                    rows = np.flatnonzero(flags)
                    count, first = found.get(name, (0, np.iinfo(np.int64).max))
                    found[name] = (count + int(sum((~np.isfinite(parts[r])).sum() for r in rows)),
                                   min(first, int(positions[rows].min())))
                continue
            arr = np.asarray(arr)
            if arr.dtype.kind not in "fc" or not arr.size:
                continue
            bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            if not bad.any():
                continue
            rows = np.flatnonzero(bad)
            if len(arr) != samples.count:  # an output without the batch axis: one row per feed of B samples
                rows = np.minimum(rows * samples.per_feed, samples.count - 1)
            count, first = found.get(name, (0, np.iinfo(np.int64).max))
            found[name] = (count + int((~np.isfinite(arr)).sum()), min(first, int(positions[rows].min())))
    if not found:
        return
    name, (count, first) = next(iter(found.items()))
    others = f" (and in output(s) {', '.join(map(repr, list(found)[1:]))})" if len(found) > 1 else ""
    source = splits[0][1].source
    domain = ("synthetic inputs (normal, mean 0, std 1) lie outside the model's domain: give samples inside it "
              "with --data FILE.npz for a bare model, or a `dataset` in program.py"
              if source.startswith("synthetic") else "give samples inside the model's domain")
    raise DatasetError(f"the unchanged model (onnxruntime) gives NaN/Inf on the evaluation data ({source}): output "
                       f"{name!r} holds {count} NaN/Inf value(s), the first in sample {first}{others}; every "
                       "candidate would be compared with values that mean nothing",
                       where=checked.model_path,
                       hint=f"{domain} (or set allow_nonfinite = True in program.py if the model is meant to "
                            "output NaN/Inf: equal NaN/Inf on both sides then count as agreement)")


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
    log.info("reference (onnxruntime) on %d samples in %d feeds (and %d held out): %s", ref.samples, ref.feeds,
             ref.held_out_samples, {k: round(v, 6) for k, v in ref.metrics.items()})
    return ref


def compute_reference(checked: CheckedProgram, threads: int, calibrate: bool) -> ReferenceData:
    """reference's work, in the child process."""
    prog = checked.load()
    samples = load_samples(prog, checked.inputs, checked.guards, checked.profile)
    calibration_path, calibration_source = None, None
    if calibrate:
        samples, calib, calibration_source = split_calibration(prog, samples, checked)
        if calib is not None:
            calibration_path = str(checked.work_dir / "calibration.npz")
            feeds_io.save_calibration(Path(calibration_path), feeds_io.feeds(calib, checked.inputs))
    samples, held = split_held_out(samples)
    fds = feeds_io.feeds(samples, checked.inputs)
    held_fds = feeds_io.feeds(held, checked.inputs) if held is not None else []
    runner = None
    try:  # the reference must run: a model onnxruntime cannot run on this data is the input's problem
        runner = open_runner("onnxruntime", Path(checked.model_path), checked.inputs, checked.outputs,
                             RunSettings(threads=threads))
        outputs = feeds_io.gather_outputs(feeds_io.run_all(runner.run, fds), samples.count, samples.batch)
        held_outputs = feeds_io.gather_outputs(feeds_io.run_all(runner.run, held_fds), held.count, held.batch) \
            if held is not None else None
    except Exception as exc:
        message = " ".join(str(exc).split())[:400]
        raise ModelError(f"onnxruntime cannot run the model on the data from {samples.source}: {message}",
                         where=checked.model_path,
                         hint="kiln measures every candidate against onnxruntime; check the model and the input "
                              "values (shapes that only the data reveals, out-of-range indices)") from None
    finally:
        if runner:
            runner.close()
    if not checked.allow_nonfinite:
        check_finite([(outputs, samples), *([(held_outputs, held)] if held is not None else [])], checked)
    where = os.path.join(checked.root, "program.py")
    metrics = compute_metrics(prog.program.get_metrics(), outputs, outputs, samples.labels, where=where)
    path = checked.work_dir / "eval.npz"
    feeds_io.save_eval(path, fds, outputs, samples.labels, samples.batch)
    ref = ReferenceData(path=str(path), samples=samples.count, feeds=len(fds), metrics=metrics,
                        calibration_path=calibration_path, calibration_source=calibration_source)
    if held is not None:
        held_path = checked.work_dir / "held_out.npz"
        feeds_io.save_eval(held_path, held_fds, held_outputs, held.labels, held.batch)
        ref.held_out_path, ref.held_out_samples = str(held_path), held.count
        ref.held_out_metrics = compute_metrics(prog.program.get_metrics(), held_outputs, held_outputs, held.labels,
                                               where=where)
    return ref
