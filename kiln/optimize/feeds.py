"""Feeds: samples cut into model calls, outputs joined back into one row per sample, and the npz files the
stages share (eval.npz: feeds, reference outputs, labels; calibration.npz: feeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.artifact.specs import TensorSpec
from kiln.fs import atomic_file
from kiln.program import ragged
from kiln.program.datasets import Samples

Feed = dict[str, np.ndarray]


def feeds(samples: Samples, specs: list[TensorSpec]) -> list[Feed]:
    """Cut samples into model feeds: one per sample for whole tensors; B rows at a time for rows of a batch,
    the last feed padded by repeating its last row."""
    if samples.batch is None:
        return [{s.name: np.asarray(samples.inputs[s.name][i], order="C") for s in specs} for i in range(samples.count)]
    step = samples.batch
    out = []
    for start in range(0, samples.count, step):
        feed = {}
        for spec in specs:
            part = samples.inputs[spec.name][start : start + step]
            if len(part) < step:
                part = np.concatenate([part, np.repeat(part[-1:], step - len(part), axis=0)])
            feed[spec.name] = np.asarray(part, order="C")
        out.append(feed)
    return out


def gather_outputs(per_feed: list[Feed], count: int, batch: int | None) -> Feed:
    """Outputs with one row per sample: per-feed outputs stacked ([N, *output shape], scalars and empty
    tensors included), or, for rows of a batch, joined along the batch axis and cut back to `count` rows.
    An output without that batch axis stays one entry per feed. Outputs whose shapes differ from feed to feed
    (samples at their own lengths) stay one tensor per feed, in an object array (kiln.program.ragged)."""
    out = {}
    for name in per_feed[0]:
        parts = [np.asarray(o[name]) for o in per_feed]
        if len({p.shape for p in parts}) > 1:
            out[name] = ragged.of(parts)
        elif batch is not None and all(p.ndim and p.shape[0] == batch for p in parts):
            out[name] = np.concatenate(parts, axis=0)[:count]
        else:
            out[name] = np.stack(parts)
    return out


def _feed_arrays(fds: list[Feed]) -> dict[str, np.ndarray]:
    """Feeds as flat npz entries (feed{i}/{input}, meta/feeds)."""
    arrays = {f"feed{i}/{n}": a for i, f in enumerate(fds) for n, a in f.items()}
    arrays["meta/feeds"] = np.array(len(fds))
    return arrays


def _read_feeds(data) -> list[Feed]:
    names = [k[len("feed0/"):] for k in data.files if k.startswith("feed0/")]
    return [{n: data[f"feed{i}/{n}"] for n in names} for i in range(int(data["meta/feeds"]))]


def _output_arrays(reference: Feed) -> dict[str, np.ndarray]:
    """Outputs as npz entries: ref/{name}, or ref{i}/{name} per sample where they differ in shape."""
    arrays = {}
    for n, a in reference.items():
        if ragged.is_ragged(a):
            arrays.update({f"ref{i}/{n}": x for i, x in enumerate(a)})
            arrays[f"ragged/{n}"] = np.array(len(a))
        else:
            arrays[f"ref/{n}"] = a
    return arrays


def _read_outputs(data) -> Feed:
    out = {k[len("ref/"):]: data[k] for k in data.files if k.startswith("ref/")}
    for key in (k for k in data.files if k.startswith("ragged/")):
        name = key[len("ragged/"):]
        out[name] = ragged.of([data[f"ref{i}/{name}"] for i in range(int(data[key]))])
    return out


def save_eval(path: Path, fds: list[Feed], reference: Feed, labels: np.ndarray | None, batch: int | None) -> None:
    arrays = _feed_arrays(fds)
    arrays.update(_output_arrays(reference))
    if labels is not None:
        arrays["labels"] = labels
    _savez_whole(path, {**arrays, "meta/batch": np.array(batch or 0)})


def load_eval(path: str | Path) -> tuple[list[Feed], Feed, np.ndarray | None, int | None]:
    """(feeds, reference outputs, labels, rows per feed or None) as saved by save_eval."""
    with np.load(path, allow_pickle=False) as data:
        fds = _read_feeds(data)
        ref = _read_outputs(data)
        labels = data["labels"] if "labels" in data.files else None
        return fds, ref, labels, int(data["meta/batch"]) or None


def save_calibration(path: Path, fds: list[Feed]) -> None:
    _savez_whole(path, _feed_arrays(fds))


def _savez_whole(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez written whole: two runs of one model share its work folder, and one read the other's half-written
    file ("BadZipFile: File is not a zip file")."""
    with atomic_file(path) as tmp, open(tmp, "wb") as out:  # a file object: np.savez would add .npz to a name
        np.savez(out, **arrays)


def load_calibration(path: str | Path) -> list[Feed]:
    with np.load(path, allow_pickle=False) as data:
        return _read_feeds(data)


def run_all(run, fds: list[Feed]) -> list[Feed]:
    return [run(f) for f in fds]
