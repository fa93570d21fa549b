"""Files: content hashes (artifacts, caches and programs are named by what they contain), folders that appear
only when complete, and the checkout's files that live beside the package."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from kiln.errors import KilnError

_CHUNK = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path) -> dict[str, str]:
    """relative posix path -> sha256 for every regular file under root, sorted; skips caches."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts:
            out[p.relative_to(root).as_posix()] = file_sha256(p)
    return out


def json_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Staging:
    """A private folder being filled; `final` is where it goes (may be set late, once its content names it)."""

    def __init__(self, path: Path, final: Path | None):
        self.path = path
        self.final = final


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """A temporary path beside `final` to write, renamed over it when the block ends (removed on error): readers
    see the old file or the new one, never a torn one, and concurrent writers never share a temporary file."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: Path | None = None, *, parent: Path | None = None,
               existing: Literal["keep", "replace", "aside"] = "keep") -> Iterator[Staging]:
    """Fill a staging folder, then rename it to `final` in one step; on any error the staging folder is removed.

    Readers therefore see no folder or a complete one. When `final` already exists at the end: "keep" leaves
    it (a concurrent writer with the same content won) and drops the staged copy, "replace" swaps it out,
    "aside" renames it to .damaged-NAME-TIME first (never delete what a user stored). `final` may be set on the
    yielded Staging inside the block (content-addressed names); the staging folder lives in `parent`
    (default: final's parent), which must be on the same file system.
    """
    base = parent or (final.parent if final else None)
    if base is None:
        raise ValueError("atomic_dir needs final or parent")
    base.mkdir(parents=True, exist_ok=True)
    staged = Staging(Path(tempfile.mkdtemp(prefix=".staging-", dir=base)), final)
    try:
        yield staged
        if staged.final is None:
            raise ValueError("atomic_dir: no final path was set")
        target = staged.final
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if existing == "keep":
                shutil.rmtree(staged.path, ignore_errors=True)
                return
            if existing == "aside":
                os.rename(target, target.with_name(f".damaged-{target.name}-{int(time.time())}"))
            else:
                shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staged.path, target)
        except OSError:  # a concurrent writer renamed its copy first
            if not target.exists():
                raise
            shutil.rmtree(staged.path, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged.path, ignore_errors=True)
        raise


def checkout_file(relative: str, error: type[KilnError] = KilnError, doing: str = "this") -> Path:
    """ROOT/relative, or a clear error saying that `doing` needs a source checkout.

    proto_templates/, runtime_image/ and deployments/ live beside the package, not in it: kiln is installed
    editable (`pip install -e .`, `make setup`), so they are one folder up."""
    path = ROOT / relative
    if not path.exists():
        raise error(f"{relative} not found next to kiln ({ROOT})",
                    hint=f"{doing} needs a kiln source checkout installed with `pip install -e .` (`make setup`)")
    return path
