"""Feeds: samples cut into model calls, outputs joined back into one row per sample, and the npz files the
stages share (eval.npz: feeds, reference outputs, labels; calibration.npz: feeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.artifact.specs import TensorSpec
from kiln.program.datasets import Samples, per_sample_shape

Feed = dict[str, np.ndarray]


def feeds(samples: Samples, specs: list[TensorSpec]) -> list[Feed]:
    """Cut samples into model feeds; a short last batch is padded by repeating its last sample."""
    first = specs[0]
    arr0 = samples.inputs[first.name]
    _, batched = per_sample_shape(first, arr0.ndim)
    step = first.shape[0] if batched and first.shape else 1
    out = []
    for start in range(0, samples.count, step):
        feed = {}
        for spec in specs:
            part = samples.inputs[spec.name][start : start + step]
            if len(part) < step:
                part = np.concatenate([part, np.repeat(part[-1:], step - len(part), axis=0)])
            _, spec_batched = per_sample_shape(spec, samples.inputs[spec.name].ndim)
            feed[spec.name] = np.ascontiguousarray(part if spec_batched else part[0])
        out.append(feed)
    return out


def gather_outputs(per_feed: list[Feed], count: int, batched: bool) -> Feed:
    """Join per-feed outputs back into arrays with one row per sample."""
    names = list(per_feed[0])
    if batched:
        return {n: np.concatenate([o[n] for o in per_feed], axis=0)[:count] for n in names}
    return {n: np.stack([o[n] for o in per_feed])[:count] for n in names}


def is_batched(samples: Samples, specs: list[TensorSpec]) -> bool:
    first = specs[0]
    return per_sample_shape(first, samples.inputs[first.name].ndim)[1]


def _feed_arrays(fds: list[Feed]) -> dict[str, np.ndarray]:
    """Feeds as flat npz entries (feed{i}/{input}, meta/feeds)."""
    arrays = {f"feed{i}/{n}": a for i, f in enumerate(fds) for n, a in f.items()}
    arrays["meta/feeds"] = np.array(len(fds))
    return arrays


def _read_feeds(data) -> list[Feed]:
    names = [k[len("feed0/"):] for k in data.files if k.startswith("feed0/")]
    return [{n: data[f"feed{i}/{n}"] for n in names} for i in range(int(data["meta/feeds"]))]


def save_eval(path: Path, fds: list[Feed], reference: Feed, labels: np.ndarray | None, batched: bool) -> None:
    arrays = _feed_arrays(fds)
    arrays.update({f"ref/{n}": a for n, a in reference.items()})
    if labels is not None:
        arrays["labels"] = labels
    np.savez(path, **arrays, **{"meta/batched": np.array(batched)})


def load_eval(path: str | Path) -> tuple[list[Feed], Feed, np.ndarray | None, bool]:
    """(feeds, reference outputs, labels, batched) as saved by save_eval."""
    with np.load(path, allow_pickle=False) as data:
        fds = _read_feeds(data)
        ref = {k[len("ref/"):]: data[k] for k in data.files if k.startswith("ref/")}
        labels = data["labels"] if "labels" in data.files else None
        return fds, ref, labels, bool(data["meta/batched"])


def save_calibration(path: Path, fds: list[Feed]) -> None:
    np.savez(path, **_feed_arrays(fds))


def load_calibration(path: str | Path) -> list[Feed]:
    with np.load(path, allow_pickle=False) as data:
        return _read_feeds(data)


def run_all(run, fds: list[Feed]) -> list[Feed]:
    return [run(f) for f in fds]
