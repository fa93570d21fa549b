"""reference: the unoptimized model in onnxruntime defines the outputs every candidate is compared with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from kiln.datasets import Samples, feeds, gather_outputs, per_sample_shape, synthetic
from kiln.errors import DatasetError, ProgramError
from kiln.runtime.runners import OrtRunner
from tasks.models import CheckedProgram, ReferenceData
from tasks.validate import load_samples


def compute_metrics(metrics, outputs, reference, labels, where: str) -> dict[str, float]:
    values = {}
    for m in metrics:
        try:
            values[m.name] = m.compute(outputs, reference, labels)
        except Exception as exc:  # user callables and mismatched outputs: explain, do not crash
            raise ProgramError(f"metric {m.name!r} raised {type(exc).__name__}: {exc}", where=where) from None
    return values


def _feed_arrays(fds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Feeds as flat npz entries (feed{i}/{input}, meta/feeds)."""
    arrays = {f"feed{i}/{n}": a for i, f in enumerate(fds) for n, a in f.items()}
    arrays["meta/feeds"] = np.array(len(fds))
    return arrays


def _read_feeds(data) -> list[dict[str, np.ndarray]]:
    names = [k[len("feed0/"):] for k in data.files if k.startswith("feed0/")]
    return [{n: data[f"feed{i}/{n}"] for n in names} for i in range(int(data["meta/feeds"]))]


def load_eval(path: str) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray], np.ndarray | None, bool]:
    """(feeds, reference outputs, labels, batched) as saved by the reference task."""
    with np.load(path, allow_pickle=False) as data:
        fds = _read_feeds(data)
        ref = {k[len("ref/"):]: data[k] for k in data.files if k.startswith("ref/")}
        labels = data["labels"] if "labels" in data.files else None
        return fds, ref, labels, bool(data["meta/batched"])


def run_all(run, fds) -> list[dict[str, np.ndarray]]:
    return [run(f) for f in fds]


def split_calibration(prog, samples: Samples, checked: CheckedProgram) -> tuple[Samples, Samples | None, str]:
    """(evaluation samples, calibration samples or None, where the calibration data came from).

    Calibration data is kept apart from the evaluation split, so int8 is judged on data it never saw."""
    p = prog.program
    if p.calibration is not None:
        return samples, p.calibration.load(prog.root, checked.inputs), p.calibration.describe()
    if p.dataset is None:
        if not p.calibrate_on_synthetic:
            return samples, None, "none (no dataset; set calibrate_on_synthetic = True to use synthetic inputs)"
        return samples, synthetic(checked.inputs, checked.guards, count=p.synthetic_samples, seed=1), "synthetic"
    batch = checked.inputs[0].shape[0] if checked.inputs[0].shape else 1
    n_cal = max(batch, int(samples.count * p.calibration_fraction))
    if samples.count - n_cal < batch:
        raise DatasetError(f"has {samples.count} samples, too few to split {p.calibration_fraction:.0%} off for "
                           "calibration and keep some to evaluate on", where=samples.source,
                           hint="add samples, or give the program a separate `calibration` dataset")
    return samples.take(slice(n_cal, None)), samples.take(slice(0, n_cal)), f"first {n_cal} samples of the dataset"


@task(name="reference")
def reference(checked: CheckedProgram, threads: int, calibrate: bool = False) -> ReferenceData:
    logger = get_run_logger()
    prog = checked.load()
    samples = load_samples(prog, checked.inputs, checked.guards)
    calibration_path, calibration_source = None, None
    if calibrate:
        samples, calib, calibration_source = split_calibration(prog, samples, checked)
        if calib is not None:
            cal_feeds = feeds(calib, checked.inputs)
            calibration_path = str(checked.work_dir / "calibration.npz")
            np.savez(calibration_path, **_feed_arrays(cal_feeds))
        logger.info("calibration data: %s", calibration_source)
    fds = feeds(samples, checked.inputs)
    first = checked.inputs[0]
    _, batched = per_sample_shape(first, samples.inputs[first.name].ndim)
    runner = OrtRunner(Path(checked.model_path), threads=threads)
    outputs = gather_outputs(run_all(runner.run, fds), samples.count, batched)
    metrics = compute_metrics(prog.program.get_metrics(), outputs, outputs, samples.labels,
                              where=os.path.join(checked.root, "program.py"))
    path = checked.work_dir / "eval.npz"
    arrays = _feed_arrays(fds)
    arrays.update({f"ref/{n}": a for n, a in outputs.items()})
    if samples.labels is not None:
        arrays["labels"] = samples.labels
    np.savez(path, **arrays, **{"meta/batched": np.array(batched)})
    logger.info("reference (onnxruntime) on %d samples in %d feeds: %s", samples.count, len(fds),
                {k: round(v, 6) for k, v in metrics.items()})
    return ReferenceData(path=str(path), samples=samples.count, feeds=len(fds), metrics=metrics,
                         calibration_path=calibration_path, calibration_source=calibration_source)


def load_calibration(path: str) -> list[dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        return _read_feeds(data)
