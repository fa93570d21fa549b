"""Datasets: where evaluation samples come from, checked against the model's inputs.

Arrays carry a leading sample axis, in one of two layouts, told apart by rank:
- whole tensors: every input is [N, *input shape], one model call (feed) per sample; this works for any
  input, scalars and inputs without a batch axis included (what synthetic data uses);
- rows of a batch: every input is [M, *input shape[1:]] and the model's first axis is a batch of B rows, so
  rows are fed B at a time (the last feed padded) and outputs are cut back to one row per sample.

Samples of different shapes (sentences at their own lengths: a parquet file of list columns, as
`datasets.Dataset.to_parquet` writes a tokenizer's unpadded output, or a folder of one .npz per sample) are
held as object arrays of whole tensors, one per sample: a row without the batch axis gets a batch of 1.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kiln.artifact.specs import IndexGuard, Profile, TensorSpec
from kiln.errors import DatasetError
from kiln.program import ragged
from kiln.program.ragged import is_ragged

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
            labels = _labels(frame[label_key].to_numpy() if frame is not None else raw[label_key])
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
        if path.is_dir():
            return read_npz_folder(path, str(self.path))
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
            column = frame[cols[0]]
            if len(cols) == 1 and column.dtype == object and len(frame) and _is_sequence(column.iloc[0]):
                return ragged.of(list(frame[cols[0]]))  # a list column: one tensor per row, of its own length
            return frame[cols].to_numpy()
        if isinstance(key, list) or key not in raw:
            raise DatasetError(f"has no array {key!r} for model input {input_name!r}; it holds {sorted(raw)}",
                               where=self.describe(), hint="map the input with Dataset(inputs={...})")
        return np.asarray(raw[key])


def fits(shape: list[int] | tuple[int, ...], spec_shape: list[int]) -> bool:
    """Same rank, and equal wherever the spec is not dynamic (-1)."""
    return len(shape) == len(spec_shape) and all(w < 0 or s == w for s, w in zip(shape, spec_shape, strict=True))


def layout(arr: np.ndarray, spec: TensorSpec) -> int | None | bool:
    """How an array holds samples for an input: None (whole tensors), B (rows of a batch of B: 1 where the
    batch dimension is dynamic, so each sample runs at its own shape), False (neither)."""
    shape = list(arr.shape)
    if fits(shape[1:], spec.shape):
        return None
    if spec.shape and len(shape) == len(spec.shape) and fits(shape[1:], spec.shape[1:]):
        return spec.shape[0] if spec.shape[0] > 0 else 1
    return False


def _is_sequence(value: object) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _labels(raw) -> np.ndarray:
    arr = np.asarray(raw) if not isinstance(raw, np.ndarray) else raw
    if is_ragged(arr):
        try:
            return np.stack([np.asarray(x) for x in arr])
        except ValueError:
            return arr
    return arr


def _dense(value: object, where: str) -> np.ndarray:
    """One sample's tensor from what a table or file holds (nested lists come as object arrays of arrays)."""
    arr = np.asarray(value)
    if arr.dtype == object:
        try:
            arr = np.array(arr.tolist())
        except ValueError:
            raise DatasetError(f"{where} is a nested list whose rows differ in length", hint="give each sample "
                               "one rectangular tensor (pad inside a sample, not across samples)") from None
    return arr


def read_npz_folder(folder: Path, where: str) -> dict[str, np.ndarray]:
    """A folder of .npz files, one sample each, arrays named after the inputs: each key becomes an object array
    of per-sample arrays (in file-name order)."""
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise DatasetError("the folder holds no .npz files", where=where,
                           hint="write one .npz per sample, its arrays named after the model's inputs")
    per_key: dict[str, list] = {}
    for i, file in enumerate(files):
        try:
            with np.load(file, allow_pickle=False) as npz:
                keys = sorted(npz.files)
                if i and keys != sorted(per_key):
                    raise DatasetError(f"{file.name} holds arrays {keys}, but {files[0].name} holds "
                                       f"{sorted(per_key)}", where=where, hint="give every sample the same arrays")
                for k in keys:
                    per_key.setdefault(k, []).append(npz[k])
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(f"cannot read {file.name}: {exc}", where=where) from None
    return {k: ragged.of(v) for k, v in per_key.items()}


def ragged_tensors(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """Each sample of `arr` (an object array, or rows/whole tensors of a regular one) as a whole tensor that
    fits `spec`; a row one axis short gets a batch of 1."""
    rank = len(spec.shape)
    out = np.empty(len(arr), dtype=object)
    rows = not is_ragged(arr) and layout(arr, spec) not in (None, False)
    for i, value in enumerate(arr):
        x = _dense(value, f"sample {i} of input {spec.name!r}")
        if rows:
            x = x[None]
        if x.ndim == rank - 1 and rank and spec.shape[0] in (-1, 1):
            x = x[None]
        if not x.size:
            raise DatasetError(f"sample {i} of input {spec.name!r} is empty (shape {list(x.shape)})", where=where,
                               hint="drop empty samples; every dimension needs at least one value")
        if not fits(x.shape, spec.shape):
            raise DatasetError(f"sample {i} of input {spec.name!r} has shape {list(x.shape)}, which does not fit "
                               f"the model input {spec.name!r} of shape {spec.shape} (-1: any length)", where=where,
                               hint="give each sample as the model takes it, or as one row of it (without the "
                                    "batch axis)")
        out[i] = x
    return out


def sample_shapes(samples: Samples) -> list[dict[str, tuple[int, ...]]]:
    """The shape of each model call's inputs: what each sample is evaluated and timed at."""
    names = list(samples.inputs)
    if samples.batch is not None:
        shape = {n: (samples.batch, *samples.inputs[n].shape[1:]) for n in names}
        return [shape] * -(-samples.count // samples.batch)
    if any(samples.inputs[n].dtype == object for n in names):
        return [{n: tuple(samples.inputs[n][i].shape) for n in names} for i in range(samples.count)]
    shape = {n: tuple(samples.inputs[n].shape[1:]) for n in names}
    return [shape] * samples.count


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
    if any(is_ragged(samples.inputs[s.name]) for s in specs):
        _check_ragged(samples, specs, where, allow_nonfinite)
        return
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


def _check_ragged(samples: Samples, specs: list[TensorSpec], where: str, allow_nonfinite: bool) -> None:
    """check_samples for samples of their own shapes: each sample fits its input, one count for all, finite;
    stacked into regular arrays when every sample turns out to have the same shape."""
    counts = {len(samples.inputs[s.name]) for s in specs} | (
        {len(samples.labels)} if samples.labels is not None else set())
    if len(counts) > 1:
        raise DatasetError(f"inputs and labels have different sample counts {sorted(counts)}", where=where)
    if counts == {0}:
        raise DatasetError("has no samples", where=where)
    if samples.labels is not None and (samples.labels.dtype == object or (
            samples.labels.dtype.kind in "fc" and not np.isfinite(samples.labels).all())):
        raise DatasetError("the labels are not one number (or one equal-shaped array) per sample, or hold NaN/Inf",
                           where=where, hint="give one class index or value per sample; labels of each sample's own "
                                             "length are not supported")
    for spec in specs:
        tensors = ragged_tensors(samples.inputs[spec.name], spec, where)
        want = np.dtype(spec.dtype)
        for i, x in enumerate(tensors):
            if x.dtype == object or not np.can_cast(x.dtype, want, "same_kind"):
                raise DatasetError(f"sample {i} of input {spec.name!r} has dtype {x.dtype}, the model expects "
                                   f"{want}", where=where, hint=f"store the data as {want}")
            if not allow_nonfinite and _first_nonfinite(x):
                raise DatasetError(f"input {spec.name!r} holds NaN/Inf values in sample {i}", where=where,
                                   hint="clean the data (or set allow_nonfinite = True in the program if the model "
                                        "is meant to take them)")
            tensors[i] = x.astype(want, copy=False)
        if len({x.shape for x in tensors}) == 1:
            samples.inputs[spec.name] = np.stack(list(tensors))
        else:
            samples.inputs[spec.name] = tensors
    if any(samples.inputs[s.name].dtype != object for s in specs) and \
            any(samples.inputs[s.name].dtype == object for s in specs):  # some inputs vary: all per sample
        for s in specs:
            if samples.inputs[s.name].dtype != object:
                samples.inputs[s.name] = ragged.of(list(samples.inputs[s.name]))
    samples.batch = None


def synthetic(specs: list[TensorSpec], guards: list[IndexGuard], count: int = 8, seed: int = 0,
              profile: Profile | None = None) -> Samples:
    """Deterministic random samples for a program without data (floats ~N(0,1), indices in range). With a
    profile, the samples' dynamic dimensions step evenly from each range's low end to its high end."""
    rng = np.random.default_rng(seed)
    bounds = {g.input: (max(g.low, 0), g.high) for g in guards}
    profile = profile or Profile()
    values = [{d.name: int(round(d.low + (d.high - d.low) * i / max(count - 1, 1))) for d in profile.dims}
              for i in range(count)]
    inputs = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind not in "fiub":
            raise DatasetError(f"cannot make synthetic data for input {spec.name!r} of dtype {dtype}",
                               hint="give the program a dataset")
        low, high = bounds.get(spec.name, (0, 2))
        shapes = [[d if d >= 0 else v[getattr(profile.axis(spec.name, a), "name", "")] for a, d in
                   enumerate(spec.shape)] for v in values] if any(d < 0 for d in spec.shape) else [spec.shape] * count

        def make(shape: list[int], dtype: np.dtype = dtype, low: int = low, high: int = high) -> np.ndarray:
            if dtype.kind == "f":
                return rng.standard_normal(shape).astype(dtype)
            if dtype.kind in "iu":
                return rng.integers(low, high, size=shape).astype(dtype)
            return rng.integers(0, 2, size=shape).astype(bool)

        if len({tuple(s) for s in shapes}) == 1:  # whole tensors: no input is assumed to have a batch axis
            inputs[spec.name] = make([count, *shapes[0]])
        else:
            inputs[spec.name] = ragged.of([make(s) for s in shapes])
    if any(a.dtype == object for a in inputs.values()):
        inputs = {k: a if a.dtype == object else ragged.of(list(a)) for k, a in inputs.items()}
    return Samples(inputs=inputs, source=f"synthetic ({count} feeds, seed {seed}"
                                         f"{', ' + profile.describe() if profile else ''})")
