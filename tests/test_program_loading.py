"""Loading model programs: folders, archives, bare .onnx, and every way a program can be wrong."""

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import ProgramError
from kiln.program.loader import load_program
from kiln.program.naming import parse_shapes

import onnx_models

PROGRAM = """
import kiln
from kiln import metrics

class P(kiln.ModelProgram):
    model = "m.onnx"
    shapes = {"ids": [1, 6]}
    metrics = [metrics.cosine(at_least=0.99)]
"""


@pytest.fixture
def program_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    d = tmp_path / "prog"
    d.mkdir()
    onnx_models.embedding(d / "m.onnx")
    (d / "program.py").write_text(PROGRAM)
    return d


def test_folder_program(program_dir):
    prog = load_program(program_dir)
    assert prog.name == "prog" and prog.shapes == {"ids": [1, 6]}
    assert prog.model_path == program_dir / "m.onnx"
    assert set(prog.files) == {"m.onnx", "program.py"}
    assert load_program(program_dir, {"ids": [1, 6]}).sha256 == prog.sha256
    assert load_program(program_dir, {"ids": [2, 6]}).sha256 != prog.sha256


def test_bare_onnx_is_a_program(tmp_path):
    path = onnx_models.embedding(tmp_path / "embed.onnx")
    prog = load_program(path, {"ids": [1, 6]})
    assert prog.name == "embed" and prog.program.get_metrics()  # default: agreement with onnxruntime
    assert list(prog.files) == ["embed.onnx"]
    (tmp_path / "minilm").mkdir()  # every Optimum export is model.onnx: it is named after its folder
    exported = onnx_models.embedding(tmp_path / "minilm" / "model.onnx")
    assert load_program(exported, {"ids": [1, 6]}).name == "minilm"


def test_syntax_error_names_file_and_line(program_dir):
    (program_dir / "program.py").write_text("import kiln\n\nclass P(kiln.ModelProgram)\n    model = 'm.onnx'\n")
    with pytest.raises(ProgramError) as exc:
        load_program(program_dir)
    assert f"{program_dir / 'program.py'}:3" in str(exc.value) and "syntax error" in str(exc.value)


def test_exception_at_import_names_the_line(program_dir):
    (program_dir / "program.py").write_text("import kiln\nx = 1\nraise RuntimeError('boom')\n")
    with pytest.raises(ProgramError, match=r"program.py:3.*RuntimeError: boom"):
        load_program(program_dir)


def test_missing_program_class(program_dir):
    (program_dir / "program.py").write_text("import kiln\n")
    with pytest.raises(ProgramError, match="exactly one subclass of kiln.ModelProgram"):
        load_program(program_dir)


def test_missing_model_file(program_dir):
    (program_dir / "program.py").write_text(PROGRAM.replace('"m.onnx"', '"missing.onnx"'))
    with pytest.raises(ProgramError, match="model file 'missing.onnx' not found"):
        load_program(program_dir)


def test_proto_without_message_names(program_dir):
    (program_dir / "x.proto").write_text('syntax = "proto3";')
    (program_dir / "program.py").write_text(PROGRAM + '    proto = "x.proto"\n')
    with pytest.raises(ProgramError, match="request.*response"):
        load_program(program_dir)


def test_metrics_must_be_metrics(program_dir):
    (program_dir / "program.py").write_text(PROGRAM.replace("[metrics.cosine(at_least=0.99)]", "['top1']"))
    with pytest.raises(ProgramError, match="metrics must be a list"):
        load_program(program_dir)


def test_zip_and_tar_archives(program_dir, tmp_path):
    z = tmp_path / "prog.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in program_dir.iterdir():
            zf.write(p, f"prog/{p.name}")
    t = tmp_path / "prog.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        tf.add(program_dir, arcname="prog")
    for archive in (z, t):
        prog = load_program(archive)
        assert prog.shapes == {"ids": [1, 6]} and (prog.root / "m.onnx").is_file()


def _zip_with(path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if symlink:
            info.external_attr = (0o120777 << 16)
        zf.writestr(info, data)
    return path


def test_archive_path_escape_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    with pytest.raises(ProgramError, match="outside the program folder"):
        load_program(_zip_with(tmp_path / "evil.zip", "../../escaped.py"))
    tar = tmp_path / "evil.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        info = tarfile.TarInfo("/etc/kiln-escape")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ProgramError, match="outside the program folder"):
        load_program(tar)
    assert not (tmp_path / "escaped.py").exists() and not Path("/etc/kiln-escape").exists()


def test_archive_symlinks_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    with pytest.raises(ProgramError, match="symbolic link"):
        load_program(_zip_with(tmp_path / "link.zip", "prog/model.onnx", b"/etc/passwd", symlink=True))
    tar = tmp_path / "link.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("prog/model.onnx")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ProgramError, match="is a link"):
        load_program(tar)


def test_archive_size_limit(tmp_path, monkeypatch):
    """Bombs: small archives that unpack past the limit (zip and tar.gz) are refused before anything is written."""
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KILN_MAX_ARCHIVE_MB", "1")
    zeros = np.zeros(2 << 20, np.uint8).tobytes()
    big = _zip_with(tmp_path / "big.zip", "prog/data.bin", zeros)
    tar = tmp_path / "big.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        info = tarfile.TarInfo("prog/data.bin")
        info.size = len(zeros)
        tf.addfile(info, io.BytesIO(zeros))
    for bomb in (big, tar):
        assert bomb.stat().st_size < 100_000  # the file itself is far under the limit
        with pytest.raises(ProgramError, match="archive unpacks to 2.0 MiB, over the 1 MiB limit"):
            load_program(bomb)
    assert not any((tmp_path / "home").rglob("data.bin"))


def test_archive_whose_headers_lie_is_damaged_not_a_crash(tmp_path, monkeypatch):
    """A zip whose directory declares 10 bytes for a 4 KiB member: a program error, not BadZipFile."""
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("prog/model.onnx", b"x" * 4096)
        zf.filelist[0].file_size = 10  # the central directory is written from this at close
    with pytest.raises(ProgramError, match="the archive is damaged") as info:
        load_program(path)
    assert "build the archive again" in info.value.hint
    assert not any((tmp_path / "home").rglob("model.onnx"))


def test_not_a_program(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ProgramError, match="not a model program"):
        load_program(tmp_path / "notes.txt")
    with pytest.raises(ProgramError, match="no such file"):
        load_program(tmp_path / "nothing-here")


def test_parse_shapes():
    assert parse_shapes(["x=1x3x224x224", "ids=1X128"]) == {"x": [1, 3, 224, 224], "ids": [1, 128]}
    for bad in ["x", "x=1xa", "=1x2", "x=0x3"]:
        with pytest.raises(ProgramError, match="cannot read shape"):
            parse_shapes([bad])


def test_bfloat16_samples_saved_in_an_npz_are_read_as_bfloat16(tmp_path):
    """np.savez keeps ml_dtypes' bfloat16 as raw 2-byte voids (|V2); a model input of bfloat16 takes them."""
    import ml_dtypes

    from kiln.artifact.specs import TensorSpec
    from kiln.program.datasets import Dataset

    values = np.array([[1.5, -2.0, 0.25]], dtype=ml_dtypes.bfloat16)
    np.savez(tmp_path / "data.npz", q=values[None])
    samples = Dataset(path="data.npz").load(tmp_path, [TensorSpec(name="q", shape=[1, 3], dtype="bfloat16")])
    assert samples.inputs["q"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert samples.inputs["q"].astype(np.float32).tolist() == [[[1.5, -2.0, 0.25]]]


def test_a_folder_of_npz_samples_loads_as_the_same_samples_as_a_parquet_file(tmp_path):
    """A folder of one .npz per sample (each at its own length) reads as the parquet file of list columns holding
    the same rows does: one int64 tensor per sample and input, in file-name order, a batch of 1 added; a folder
    with no .npz, or whose samples hold different arrays, is named. (The optimize flow from such data is
    tests/test_dynamic_shapes.py's, with the parquet file: from here on both are the same Samples.)"""
    import pandas as pd

    from kiln.artifact.specs import TensorSpec
    from kiln.errors import DatasetError
    from kiln.program import ragged
    from kiln.program.datasets import Dataset

    names = ("input_ids", "attention_mask", "token_type_ids")
    rng = np.random.default_rng(0)
    rows = [{"input_ids": rng.integers(1, 100, n).tolist(), "attention_mask": [1] * n, "token_type_ids": [0] * n}
            for n in (29, 3, 11, 3, 17, 8, 1, 12, 25, 6, 4)]
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in reversed(range(len(rows))):  # written out of order: the file names give the order
        np.savez(folder / f"{i:04d}.npz", **{k: np.asarray(v, np.int64) for k, v in rows[i].items()})
    pd.DataFrame(rows).to_parquet(tmp_path / "real.parquet")
    specs = [TensorSpec(name=n, dtype="int64", shape=[1, -1]) for n in names]
    from_folder = Dataset(path="samples").load(tmp_path, specs)
    from_parquet = Dataset(path="real.parquet").load(tmp_path, specs)
    assert from_folder.count == from_parquet.count == len(rows) and from_folder.labels is None
    for name in names:
        got, want = from_folder.inputs[name], from_parquet.inputs[name]
        assert ragged.is_ragged(got) and ragged.is_ragged(want)
        for i, row in enumerate(rows):
            assert got[i].dtype == np.int64 and got[i].shape == (1, len(row[name])), (name, i, got[i].shape)
            np.testing.assert_array_equal(got[i], want[i])
            np.testing.assert_array_equal(got[i][0], row[name])

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="the folder holds no .npz files"):
        Dataset(path="empty").load(tmp_path, specs)
    np.savez(folder / "9999.npz", input_ids=np.ones(3, np.int64))
    with pytest.raises(DatasetError, match=r"9999.npz holds arrays \['input_ids'\], but 0000.npz holds"):
        Dataset(path="samples").load(tmp_path, specs)
