"""Programs kiln writes for a bare model: `kiln optimize model.onnx --data samples.npz --range 'cosine>=0.99'`.

The model, its external data, the data and a generated program.py go into one folder under
KILN_HOME/programs/generated, named by their content. From there on it is an ordinary program: it is hashed,
saved inside the artifact (the user can read, edit and re-run the program.py kiln wrote), and `reoptimize`
finds the same data and ranges again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from kiln.config import kiln_home
from kiln.errors import DatasetError, ProgramError
from kiln.fs import atomic_dir, file_sha256, json_sha256
from kiln.program.external_data import external_data_files
from kiln.program.metrics import parse_ranges, source

DATA_SUFFIXES = (".npz", ".parquet", ".pq")
DATA_HINT = ("give a .npz with one array per input name (first axis: samples), a .parquet with one column per "
             "input (lists for samples of their own lengths), a folder of one .npz per sample, or a folder of "
             "NAME.npy files")


def _data_files(data: Path) -> list[Path]:
    """The data's files: one .npz or .parquet, a folder of .npz (one sample each), or a folder of NAME.npy (one
    array per model input, and labels)."""
    if data.is_file():
        if data.suffix.lower() not in DATA_SUFFIXES:
            raise DatasetError(f"unsupported data file {data.suffix!r}", where=str(data), hint=DATA_HINT)
        return [data]
    if data.is_dir():
        files = sorted(data.glob("*.npz")) or sorted(data.glob("*.npy"))
        if not files:
            raise DatasetError("the folder holds no .npz or .npy files", where=str(data), hint=DATA_HINT)
        return files
    raise DatasetError("no such file or folder", where=str(data),
                       hint=DATA_HINT + ", readable on the machine that runs kiln")


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # no copy of a multi-GB model when the store shares its file system
    except OSError:
        shutil.copy2(src, dest)


def _merge_npy(files: list[Path], dest: Path) -> None:
    """A folder of .npy as one .npz (pickled object arrays are refused: data never runs code)."""
    arrays = {}
    for f in files:
        try:
            arrays[f.stem] = np.load(f, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"cannot read {f.name}: {exc}", where=str(f.parent)) from None
    np.savez(dest, **arrays)


def default_name(model: Path) -> str:
    """The model's name in the store: its file name, or its folder's when the file has a generic name (every
    Optimum export is model.onnx)."""
    generic = model.stem.lower() in ("model", "model_optimized", "model_quantized", "onnx")
    return model.parent.name if generic and model.parent.name else model.stem


def program_source(name: str | None, model: str, data: str | None, metrics: list) -> str:
    lines = ['"""Written by kiln for a bare model (kiln optimize MODEL --data ... --range ...): edit it freely."""',
             "", "import kiln", "", "", "class Program(kiln.ModelProgram):"]
    if name:
        lines.append(f"    name = {name!r}")
    lines.append(f"    model = {model!r}")
    if data:
        lines.append(f'    dataset = kiln.Dataset(path={data!r})')
    if metrics:
        lines.append("    metrics = [")
        lines += [f"        {source(m)}," for m in metrics]
        lines.append("    ]")
    return "\n".join(lines) + "\n"


def write_program(model: Path, data: Path | None, ranges: list[str], name: str | None) -> Path:
    """A program folder for `model` with `data` and `ranges`; the same inputs give the same folder."""
    if model.suffix.lower() != ".onnx" or not model.is_file():
        raise ProgramError("--data and --range describe a bare .onnx model", where=str(model),
                           hint="a program folder declares its dataset and metrics in program.py")
    metrics = parse_ranges(ranges)
    name = name or default_name(model)
    files = _data_files(data) if data else []
    externals = external_data_files(model)
    identity = json_sha256({"model": file_sha256(model), "external": {e: file_sha256(model.parent / e)
                                                                       for e in externals},
                            "data": {f.name: file_sha256(f) for f in files}, "ranges": ranges, "name": name})
    final = kiln_home() / "programs" / "generated" / identity[:24]
    if (final / "program.py").is_file():
        return final
    with atomic_dir(final) as staged:
        _link_or_copy(model, staged.path / model.name)
        for e in externals:
            (staged.path / e).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(model.parent / e, staged.path / e)
        dataset = None
        if len(files) == 1 and data is not None and data.is_file():
            dataset = "data" + files[0].suffix.lower()
            _link_or_copy(files[0], staged.path / dataset)
        elif files and files[0].suffix.lower() == ".npz":  # one sample per file
            dataset = "data"
            (staged.path / dataset).mkdir()
            for f in files:
                _link_or_copy(f, staged.path / dataset / f.name)
        elif files:
            dataset = "data.npz"
            _merge_npy(files, staged.path / dataset)
        (staged.path / "program.py").write_text(program_source(name, model.name, dataset, metrics))
    return final
