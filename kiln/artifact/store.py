"""The local artifact store: content-addressed folders, published atomically, verified on read.

Layout: STORE/NAME/ID/ where ID is derived from the sha256 of every file. A folder appears only once it is
complete (staged in STORE/.staging and renamed), and an existing artifact is never overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.artifact.layout import MANIFEST
from kiln.artifact.manifest import Manifest
from kiln.config import settings
from kiln.errors import ArtifactError
from kiln.fs import Staging, atomic_dir, json_sha256, tree_files


def default_store() -> Path:
    return settings().store_dir


class ArtifactStore:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root else default_store()

    def staging(self, final: Path | None = None, existing: str = "keep"):
        """atomic_dir in this store: a private folder under STORE/.staging, renamed into place when complete."""
        return atomic_dir(final, parent=self.root / ".staging", existing=existing)  # type: ignore[arg-type]

    def publish(self, fill: Callable[[Path], Manifest]) -> Path:
        """`fill(folder)` writes the artifact's files and returns its manifest; the files are hashed, the id
        derived from them, the manifest written, and the folder moved into place (an identical one is kept).

        The version is assigned and the folder renamed under a per-name lock, so two runs publishing the same
        model at once get two versions, never the same one twice."""
        with contextlib.ExitStack() as locked:
            with self.staging() as staged:
                manifest = fill(staged.path)
                locked.enter_context(self._lock(manifest.name))  # held until the rename below is done
                self._name(staged, manifest)
        return staged.final  # type: ignore[return-value]

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """An exclusive lock on NAME's versions in this store (flock: released if the process dies)."""
        folder = self.root / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{name}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _name(self, staged: Staging, manifest: Manifest) -> None:
        manifest.files = {k: v for k, v in tree_files(staged.path).items() if k != MANIFEST}
        manifest.id = json_sha256({"files": manifest.files, "selected": manifest.selected})[:16]
        staged.final = self.root / manifest.name / manifest.id
        manifest.version = self.next_version(manifest.name)
        manifest.write(staged.path)

    def next_version(self, name: str) -> int:
        known = [Manifest.read(p.parent).version or 0 for p in (self.root / name).glob(f"*/{MANIFEST}")]
        return max([len(known), *known]) + 1

    def manifests(self) -> list[tuple[Path, Manifest]]:
        """Every readable artifact with its manifest, by model name then version (unreadable ones are left out)."""
        out = []
        for folder in self.artifacts():
            try:
                out.append((folder, Manifest.read(folder)))
            except ArtifactError:
                continue
        return sorted(out, key=lambda fm: (fm[1].name, fm[1].version or 0, fm[1].created_at))

    def folder(self, manifest: Manifest) -> Path:
        """Where a published manifest's artifact lives in this store."""
        return self.root / manifest.name / manifest.id

    def newest(self, name: str) -> Path | None:
        """The folder of `name`'s newest readable version, or None."""
        versions = [folder for folder, m in self.manifests() if m.name == name]
        return versions[-1] if versions else None

    def artifacts(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent for p in self.root.glob(f"*/*/{MANIFEST}") if not p.parts[-3].startswith("."))


def record(folder: Path, field: str, entry) -> Manifest:
    """Append where an artifact was shipped (an Upload, an ImageRecord) to its manifest; its hash is unchanged."""
    manifest = Manifest.read(folder)
    getattr(manifest, field).append(entry)
    manifest.write(folder)
    return manifest


def verify(folder: Path, manifest: Manifest | None = None) -> tuple[Manifest, list[str]]:
    """The manifest (read here unless given) and every file whose content does not match its recorded sha256."""
    manifest = manifest or Manifest.read(folder)
    problems = []
    actual = {k: v for k, v in tree_files(folder).items() if k != MANIFEST}
    for rel, sha in manifest.files.items():
        if rel not in actual:
            problems.append(f"{rel}: missing")
        elif actual[rel] != sha:
            problems.append(f"{rel}: sha256 {actual[rel][:12]}... != recorded {sha[:12]}...")
    for rel in sorted(set(actual) - set(manifest.files)):
        problems.append(f"{rel}: not in the manifest")
    return manifest, problems


def resolve(ref: str | Path, store: ArtifactStore | None = None) -> Path:
    """An artifact folder from a path, or NAME[/ID] in the store (the newest version of NAME)."""
    path = Path(ref).expanduser()
    try:
        if (path / MANIFEST).is_file():
            return path.resolve()
    except PermissionError:
        raise ArtifactError(f"cannot read {MANIFEST} (permission denied for uid {os.getuid()})", where=str(path),
                            hint="make the artifact readable by this user (a mounted folder: chmod -R a+rX it)"
                            ) from None
    store = store or ArtifactStore()
    candidates = [p for p in store.artifacts() if p.parent.name == str(ref) or
                  f"{p.parent.name}/{p.name}" == str(ref) or p.name == str(ref)]
    if not candidates:
        raise ArtifactError("no such artifact", where=str(ref),
                            hint=f"give an artifact folder, or NAME[/ID] from the store {store.root}")
    return max(candidates, key=lambda p: Manifest.read(p).created_at)
