"""Safe extraction of program archives (.zip, .tar, .tar.gz/.tgz).

An archive is untrusted: members that escape the folder (absolute paths, `..`), links, device files, or
more bytes than the limit are refused before anything is written; extraction goes to a temporary folder
that is renamed into place only when complete.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from kiln.config import settings
from kiln.errors import ProgramError
from kiln.fs import atomic_dir

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(name: str, archive: Path) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise ProgramError(f"member {name!r} would be written outside the program folder", where=str(archive),
                           hint="rebuild the archive with relative paths inside one folder")


def _members(archive: Path) -> list[tuple[str, int]]:
    """(name, size) of every regular file; raises on anything that is not a file or folder."""
    out: list[tuple[str, int]] = []
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_name(info.filename, archive)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode == 0o120000:
                        raise ProgramError(f"member {info.filename!r} is a symbolic link", where=str(archive),
                                           hint="archives may hold only regular files and folders")
                    if not info.is_dir():
                        out.append((info.filename, info.file_size))
        else:
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    _check_name(m.name, archive)
                    if m.issym() or m.islnk():
                        raise ProgramError(f"member {m.name!r} is a link", where=str(archive),
                                           hint="archives may hold only regular files and folders")
                    if not (m.isfile() or m.isdir()):
                        raise ProgramError(f"member {m.name!r} is not a regular file", where=str(archive))
                    if m.isfile():
                        out.append((m.name, m.size))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise ProgramError(f"cannot read the archive: {exc}", where=str(archive)) from exc
    return out


def _unpack(archive: Path, names: list[str], dest: Path, limit: int) -> None:
    """Write the members, counting the bytes actually unpacked: headers can lie about sizes (a zip bomb
    declares small files), so the limit is enforced on what is written, and CRCs are checked as zip reads."""
    written = 0

    def copy(src, target: Path, name: str) -> None:
        nonlocal written
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise ProgramError(f"archive unpacks to more than the {limit / 2**20:.0f} MiB limit (at member "
                                       f"{name!r}), more than its headers declare", where=str(archive),
                                       hint="raise KILN_MAX_ARCHIVE_MB if the program is really this large")
                dst.write(chunk)

    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in names:
                with zf.open(name) as src:
                    copy(src, dest / name, name)
        return
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            if member.isdir():
                (dest / member.name).mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(member)
            if src is not None:
                copy(src, dest / member.name, member.name)


def extract(archive: Path, dest_parent: Path, name: str) -> Path:
    """Extract `archive` to dest_parent/name (reused if already there) and return the program folder."""
    limit = settings().max_archive_bytes
    if archive.stat().st_size > limit:
        raise ProgramError(f"archive is {archive.stat().st_size / 2**20:.1f} MiB, over the "
                           f"{limit / 2**20:.0f} MiB limit", where=str(archive), hint="raise KILN_MAX_ARCHIVE_MB")
    members = _members(archive)
    total = sum(size for _, size in members)
    if total > limit:
        raise ProgramError(f"archive unpacks to {total / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB limit",
                           where=str(archive), hint="raise KILN_MAX_ARCHIVE_MB")
    if not members:
        raise ProgramError("archive holds no files", where=str(archive))
    final = dest_parent / name
    if not final.exists():
        try:
            with atomic_dir(final) as staged:  # a concurrent extraction of the same archive may win: kept
                _unpack(archive, [f for f, _ in members], staged.path, limit)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise ProgramError(f"the archive is damaged: {exc}", where=str(archive),
                               hint="build the archive again (its headers do not match its contents)") from None
    entries = [p for p in final.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return final
