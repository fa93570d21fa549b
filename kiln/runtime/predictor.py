"""`kiln.load(artifact)`: a predictor that runs the selected module with the runtime only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kiln.artifact.manifest import Manifest
from kiln.artifact.specs import check_finite, check_index_ranges
from kiln.artifact.store import resolve, verify
from kiln.errors import ArtifactError, InputError
from kiln.runtime.cpu_flags import for_this_cpu
from kiln.runtime.runners import Runner, open_runner


class Predictor:
    """Validated calls into an optimized model. `run` refuses bad feeds before the model sees them."""

    def __init__(self, folder: Path, manifest: Manifest, runner: Runner):
        self.folder = folder
        self.manifest = manifest
        self.runner = runner
        self.inputs = manifest.inputs
        self.outputs = manifest.outputs

    @property
    def backend(self) -> str:
        return self.runner.backend

    def check(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the feed cast to the model's dtypes; raise InputError naming the field and the problem."""
        names = [s.name for s in self.inputs]
        missing = [n for n in names if n not in feed]
        extra = [n for n in feed if n not in names]
        if missing or extra:
            raise InputError(f"expected inputs {names}; missing {missing}, unexpected {extra}")
        out = {}
        for spec in self.inputs:
            arr = np.asarray(feed[spec.name])
            want = np.dtype(spec.dtype)
            if arr.dtype == object or not np.can_cast(arr.dtype, want, "same_kind"):
                raise InputError(f"input {spec.name!r} has dtype {arr.dtype}, expected {want}")
            out[spec.name] = np.asarray(arr, dtype=want, order="C")  # a 0-d input stays 0-d
        self.manifest.profile.check(out, self.inputs)  # rank, fixed dimensions, each dynamic one in its range
        check_index_ranges(out, self.manifest.guards, where="request")
        if not self.manifest.program.allow_nonfinite:
            check_finite(out, where="request")
        return out

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run(self.check(feed))

    __call__ = run

    def close(self) -> None:
        self.runner.close()


def checked_files(folder: Path, manifest: Manifest | None = None) -> Manifest:
    """The artifact's manifest (read here unless given) once every file matches its recorded sha256."""
    manifest, problems = verify(folder, manifest)
    if problems:
        raise ArtifactError("files do not match the manifest: " + "; ".join(problems[:5]), where=str(folder),
                            hint="the artifact was modified or is incomplete; fetch or publish it again")
    return manifest


def open_predictor(folder: Path, manifest: Manifest, *, threads: int | None = None,
                   spin: bool | None = None) -> Predictor:
    """The selected module of the artifact in `folder`, as `manifest` (read once by the caller) describes it: of
    an artifact for several targets, the build of the most capable target this CPU runs; refused by name, before
    the library is opened, where this CPU lacks what its code uses."""
    manifest = for_this_cpu(manifest, str(folder))
    runner = open_runner(manifest.backend, folder / manifest.model.path, manifest.inputs, manifest.outputs,
                         manifest.settings.merged(threads=threads, spin=spin), manifest.profile)
    return Predictor(folder, manifest, runner)


def load(artifact: str | os.PathLike, *, threads: int | None = None, verify_files: bool = True,
         spin: bool | None = None) -> Predictor:
    """Open an artifact folder (or NAME[/ID] in the store) and load its selected module with the settings it
    was selected with; `threads` and `spin` override them (a server shares cores between instances)."""
    folder = resolve(artifact)
    manifest = checked_files(folder) if verify_files else Manifest.read(folder)
    return open_predictor(folder, manifest, threads=threads, spin=spin)
