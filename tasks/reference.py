"""reference: the unoptimized model in onnxruntime defines the outputs every candidate is compared with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from kiln.datasets import feeds, gather_outputs, per_sample_shape
from kiln.errors import ProgramError
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


def load_eval(path: str) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray], np.ndarray | None, bool]:
    """(feeds, reference outputs, labels, batched) as saved by the reference task."""
    with np.load(path, allow_pickle=False) as data:
        n_feeds = int(data["meta/feeds"])
        names = [k[len("feed0/"):] for k in data.files if k.startswith("feed0/")]
        fds = [{n: data[f"feed{i}/{n}"] for n in names} for i in range(n_feeds)]
        ref = {k[len("ref/"):]: data[k] for k in data.files if k.startswith("ref/")}
        labels = data["labels"] if "labels" in data.files else None
        return fds, ref, labels, bool(data["meta/batched"])


def run_all(run, fds) -> list[dict[str, np.ndarray]]:
    return [run(f) for f in fds]


@task(name="reference")
def reference(checked: CheckedProgram, threads: int) -> ReferenceData:
    logger = get_run_logger()
    prog = checked.load()
    samples = load_samples(prog, checked.inputs, checked.guards)
    fds = feeds(samples, checked.inputs)
    first = checked.inputs[0]
    _, batched = per_sample_shape(first, samples.inputs[first.name].ndim)
    runner = OrtRunner(Path(checked.model_path), threads=threads)
    outputs = gather_outputs(run_all(runner.run, fds), samples.count, batched)
    metrics = compute_metrics(prog.program.get_metrics(), outputs, outputs, samples.labels,
                              where=os.path.join(checked.root, "program.py"))
    path = checked.work_dir / "eval.npz"
    arrays = {f"feed{i}/{n}": a for i, f in enumerate(fds) for n, a in f.items()}
    arrays.update({f"ref/{n}": a for n, a in outputs.items()})
    if samples.labels is not None:
        arrays["labels"] = samples.labels
    np.savez(path, **arrays, **{"meta/feeds": np.array(len(fds)), "meta/batched": np.array(batched)})
    logger.info("reference (onnxruntime) on %d samples in %d feeds: %s", samples.count, len(fds),
                {k: round(v, 6) for k, v in metrics.items()})
    return ReferenceData(path=str(path), samples=samples.count, feeds=len(fds), metrics=metrics)
