"""Datasets: where evaluation samples come from, checked against the model's inputs.

Arrays carry a leading sample axis, in one of two layouts, told apart by rank:
- whole tensors: every input is [N, *input shape], one model call (feed) per sample; this works for any
  input, scalars and inputs without a batch axis included (what synthetic data uses);
- rows of a batch: every input is [M, *input shape[1:]] and the model's first axis is a batch of B rows, so
  rows are fed B at a time (the last feed padded) and outputs are cut back to one row per sample.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kiln.artifact.specs import IndexGuard, TensorSpec
from kiln.errors import DatasetError

LABEL_KEYS = ("labels", "label", "y")


class Samples(BaseModel):
    """Loaded samples: one array per model input (sample axis first) and optional labels."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "synthetic"
    batch: int | None = None  # rows per feed when the arrays are rows of a batch; None: whole tensors
    index: np.ndarray | None = None  # each sample's position in what was loaded (None: 0..count-1)

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def positions(self) -> np.ndarray:
        """Each sample's position in the loaded data, kept through splits, so that a message about a sample
        names the one the user can find in their file."""
        return self.index if self.index is not None else np.arange(self.count)

    @property
    def per_feed(self) -> int:
        """Samples per model call."""
        return self.batch or 1

    def take(self, idx: np.ndarray | slice) -> Samples:
        return Samples(inputs={k: v[idx] for k, v in self.inputs.items()},
                       labels=None if self.labels is None else self.labels[idx], source=self.source,
                       batch=self.batch, index=self.positions[idx])


class Dataset(BaseModel):
    """A dataset file (npz, csv, parquet) or a Python loader.

    `inputs` maps each model input to an npz key, or to column names / a glob of columns for tables.
    `labels` names the label key/column. Left out, keys equal to the input names and a key named
    labels/label/y are used.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: str | None = None
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)
    labels: str | None = None
    limit: int | None = Field(default=None, gt=0)
    loader: Callable[[], dict[str, np.ndarray]] | None = Field(default=None, exclude=True)

    def describe(self) -> str:
        return self.path or getattr(self.loader, "__name__", "loader")

    def load(self, root: Path, specs: list[TensorSpec], allow_nonfinite: bool = False) -> Samples:
        """Read the data, map it to the model's inputs, and check shapes and dtypes."""
        raw = self._read(root)
        names = [s.name for s in specs]
        extra = set(self.inputs) - set(names)
        if extra:  # before any lookup: a typo in a mapped name is the mistake to report, not a missing key
            raise DatasetError(f"maps {sorted(extra)}, which the model does not have; the model's inputs are "
                               f"{names}", where=self.describe(), hint="fix the keys of Dataset(inputs=...)")
        inputs: dict[str, np.ndarray] = {}
        for spec in specs:
            key = self.inputs.get(spec.name, spec.name)
            inputs[spec.name] = self._column(raw, key, spec.name)
        frame = raw.get("__frame__")
        keys = list(frame.columns) if frame is not None else list(raw)
        label_key = self.labels or next((k for k in LABEL_KEYS if k in keys), None)
        labels = None
        if label_key is not None:
            if label_key not in keys:
                raise DatasetError(f"has no labels {label_key!r}; it holds {sorted(keys)[:20]}",
                                   where=self.describe())
            labels = np.asarray(frame[label_key].to_numpy() if frame is not None else raw[label_key])
        samples = Samples(inputs=inputs, labels=labels, source=self.describe())
        check_samples(samples, specs, self.describe(), allow_nonfinite)
        if self.limit:
            samples = samples.take(slice(0, self.limit))
        return samples

    def _read(self, root: Path) -> dict[str, np.ndarray]:
        if self.loader is not None:
            try:
                data = self.loader()
            except Exception as exc:  # user code: report, do not crash
                raise DatasetError(f"the dataset loader raised {type(exc).__name__}: {exc}",
                                   where=self.describe()) from exc
            if not isinstance(data, dict):
                raise DatasetError("a dataset loader must return a dict of arrays", where=self.describe())
            return {k: np.asarray(v) for k, v in data.items()}
        if not self.path:
            raise DatasetError("a Dataset needs a path or a loader")
        path = (root / self.path).resolve()
        if not path.is_file():
            raise DatasetError("file not found", where=str(self.path),
                               hint="paths are relative to the program folder")
        suffix = path.suffix.lower()
        try:
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as npz:
                    return {k: npz[k] for k in npz.files}
            if suffix in (".csv", ".parquet", ".pq"):
                import pandas as pd

                frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
                return {"__frame__": frame}  # type: ignore[dict-item]
        except Exception as exc:
            raise DatasetError(f"cannot read {suffix} file: {exc}", where=str(self.path)) from exc
        raise DatasetError(f"unsupported dataset format {suffix!r}", where=str(self.path),
                           hint="use .npz, .csv, .parquet, or Dataset(loader=...)")

    def _column(self, raw: dict, key: str | list[str], input_name: str) -> np.ndarray:
        frame = raw.get("__frame__")
        if frame is not None:
            cols = key if isinstance(key, list) else (
                fnmatch.filter(list(frame.columns), key) if any(c in key for c in "*?[") else [key])
            missing = [c for c in cols if c not in frame.columns]
            if missing or not cols:
                raise DatasetError(f"input {input_name!r} needs columns {missing or key}, not in the table "
                                   f"(columns: {list(frame.columns)[:20]})", where=self.describe(),
                                   hint="map the input with Dataset(inputs={...: [columns] or 'glob*'})")
            return frame[cols].to_numpy()
        if isinstance(key, list) or key not in raw:
            raise DatasetError(f"has no array {key!r} for model input {input_name!r}; it holds {sorted(raw)}",
                               where=self.describe(), hint="map the input with Dataset(inputs={...})")
        return np.asarray(raw[key])


def layout(arr: np.ndarray, spec: TensorSpec) -> int | None | bool:
    """How an array holds samples for an input: None (whole tensors), B (rows of a batch of B), False (neither)."""
    shape = list(arr.shape)
    if shape[1:] == list(spec.shape):
        return None
    if spec.shape and len(shape) == len(spec.shape) and shape[1:] == list(spec.shape[1:]):
        return spec.shape[0]
    return False


def _first_nonfinite(arr: np.ndarray) -> tuple[int, int] | None:
    """(how many NaN/Inf values, the sample of the first) in a float array, or None when all are finite."""
    if arr.dtype.kind not in "fc" or not arr.size:
        return None
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    return int(bad.sum()), int(np.argwhere(bad)[0][0])


def check_samples(samples: Samples, specs: list[TensorSpec], where: str, allow_nonfinite: bool = False) -> None:
    """Refuse data whose per-sample shape or dtype kind does not fit the model inputs, or that holds NaN/Inf
    (a reference computed on NaN agrees with anything, so every candidate would pass)."""
    counts = set()
    layouts: dict[str, int | None] = {}
    for spec in specs:
        arr = samples.inputs[spec.name]
        found = layout(arr, spec) if arr.ndim else False
        if found is False:
            rows = f" or rows [M, {', '.join(map(str, spec.shape[1:]))}]" if spec.shape else ""
            raise DatasetError(
                f"input {spec.name!r} has shape {list(arr.shape)}, which does not fit the model input "
                f"{spec.name!r} of shape {spec.shape} (expected whole tensors "
                f"[N{''.join(', ' + str(d) for d in spec.shape)}]{rows})",
                where=where, hint="reshape the data, or declare the model's input shape in the program")
        layouts[spec.name] = found
        want = np.dtype(spec.dtype)
        if arr.dtype.kind == "V" and want.kind == "V" and arr.dtype.itemsize == want.itemsize:
            # .npz keeps ml_dtypes' bfloat16/float8 as raw bytes of the same size: read them as what they are
            arr = samples.inputs[spec.name] = arr.view(want)
        if arr.dtype == object or not np.can_cast(arr.dtype, want, "same_kind"):
            raise DatasetError(f"input {spec.name!r} has dtype {arr.dtype}, the model expects {want}",
                               where=where, hint=f"store the data as {want}")
        counts.add(len(arr))
    if len(set(layouts.values())) > 1:
        described = ", ".join(f"{n}: {'whole tensors' if b is None else f'rows of {b}'}" for n, b in layouts.items())
        raise DatasetError(f"inputs mix whole tensors and rows of a batch ({described})", where=where,
                           hint="give every input as whole tensors [N, *input shape], or every one as rows")
    samples.batch = next(iter(layouts.values()), None)
    if samples.labels is not None:
        counts.add(len(samples.labels))
    if len(counts) > 1:
        raise DatasetError(f"inputs and labels have different sample counts {sorted(counts)}", where=where)
    if counts == {0}:
        raise DatasetError("has no samples", where=where)
    named = [(f"input {n!r}", a) for n, a in samples.inputs.items() if not allow_nonfinite]
    if samples.labels is not None and samples.labels.dtype != object:
        named.append(("the labels", samples.labels))
    for what, arr in named:
        found = _first_nonfinite(np.asarray(arr))
        if found:
            raise DatasetError(f"{what} holds {found[0]} NaN/Inf value(s), the first in sample {found[1]}",
                               where=where, hint="clean the data (or set allow_nonfinite = True in the program if "
                                                 "the model is meant to take them)")
    for spec in specs:
        samples.inputs[spec.name] = samples.inputs[spec.name].astype(spec.dtype, copy=False)


def synthetic(specs: list[TensorSpec], guards: list[IndexGuard], count: int = 8, seed: int = 0) -> Samples:
    """Deterministic random samples for a program without data (floats ~N(0,1), indices in range)."""
    rng = np.random.default_rng(seed)
    bounds = {g.input: (max(g.low, 0), g.high) for g in guards}
    inputs = {}
    for spec in specs:
        shape = [count, *spec.shape]  # whole tensors: no input is assumed to have a batch axis
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            low, high = bounds.get(spec.name, (0, 2))
            arr = rng.integers(low, high, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise DatasetError(f"cannot make synthetic data for input {spec.name!r} of dtype {dtype}",
                               hint="give the program a dataset")
        inputs[spec.name] = arr
    return Samples(inputs=inputs, source=f"synthetic ({count} feeds, seed {seed})")
