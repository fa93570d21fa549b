"""Build contexts for the runtime images, assembled on the host so the build itself needs no package index.

The generic image gets wheels downloaded here for the image's Python (Ubuntu 24.04: 3.12), pinned to the
versions installed beside kiln (so generated protobuf code and TVM modules match what produced them), and
kiln's own source. A model image's context is its Dockerfile plus the artifact folder.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

from kiln.errors import ImageError
from kiln.fs import atomic_dir, checkout_file, json_sha256, tree_files

# what `python -m kiln.serving` imports; nothing of the optimizer (prefect, onnx, the TVM compiler)
RUNTIME_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "onnxruntime", "numpy", "pydantic", "pydantic-settings",
                    "protobuf", "grpcio", "grpcio-reflection", "grpcio-health-checking",
                    "starlette", "uvicorn", "prometheus-client",  # the REST routes and /metrics
                    "cloudpickle", "psutil")  # a device (kiln.device): TVM's RPC server process, and its stop
# the parts of kiln the server imports (import-linter keeps kiln.runtime and kiln.serving off the rest)
RUNTIME_SOURCES = ("__init__.py", "client.py", "config.py", "errors.py", "fs.py", "artifact", "program",
                   "runtime", "serving", "device")
IMAGE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_39_x86_64", "manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def source_root() -> Path:
    """The checkout kiln runs from: runtime_image/ lives beside the package, like proto_templates/."""
    return checkout_file("runtime_image/Dockerfile", ImageError, "building images").parents[1]


def source_revision() -> str:
    """The git commit of the kiln checkout that builds the image (OCI's `revision`), or kiln's version."""
    from kiln import __version__

    try:
        proc = subprocess.run(["git", "-C", str(source_root()), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return __version__
    return proc.stdout.strip() if proc.returncode == 0 else __version__


def requirements() -> list[str]:
    out = []
    for name in RUNTIME_PACKAGES:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise ImageError(f"{name} is not installed beside kiln", hint="run `make setup`") from None
    return out


def constraints() -> list[str]:
    """Every distribution installed here, pinned: the image's transitive dependencies match the host's."""
    pins = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name and name != "kiln":
            pins[name] = f"{name}=={dist.version}"
    return sorted(pins.values())


def _download(folder: Path, reqs: list[str], what: str, hint: str, log, also: tuple[str, ...] = ()) -> Path:
    """Wheels of `reqs` (and of `also`, not listed in requirements.txt) and their dependencies for the image's
    Python, pinned like this host, into `folder` (cached: a folder with requirements.txt is complete), with
    requirements.txt and constraints.txt."""
    if (folder / "requirements.txt").is_file():
        return folder
    with atomic_dir(folder, existing="replace") as staged:
        (staged.path / "constraints.txt").write_text("\n".join(constraints()) + "\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", IMAGE_PYTHON, *[a for p in PLATFORMS for a in ("--platform", p)],
               "-c", str(staged.path / "constraints.txt"), "-d", str(staged.path), *reqs, *also]
        log(f"downloading {what} for Python {IMAGE_PYTHON} into {folder}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ImageError(f"could not download {what}:\n{tail}", hint=hint,
                             transient="No matching distribution" not in proc.stderr)
        (staged.path / "requirements.txt").write_text("\n".join(reqs) + "\n")
    return folder


def download_wheels(cache: Path, log=print) -> Path:
    """Wheels for the runtime image (cached by what they pin); returns the folder, with requirements.txt."""
    reqs = requirements()
    key = json_sha256({"requirements": reqs, "constraints": constraints(), "python": IMAGE_PYTHON})[:16]
    return _download(cache / "wheels" / key, reqs, "the runtime wheels",
                     "the package index must be reachable from this host (builds never reach it)", log)


def download_program_requirements(cache: Path, reqs: list[str], log=print) -> Path:
    """Wheels of a program's `requirements` (and pip, to install them offline in the model's image), pinned
    like the runtime where they share dependencies, so the packages the runtime already has stay as they are."""
    key = json_sha256({"program": reqs, "constraints": constraints(), "python": IMAGE_PYTHON})[:16]
    return _download(cache / "deps" / key, reqs, f"the program's requirements {reqs}",
                     f"check the program's `requirements`: each needs a wheel for CPython {IMAGE_PYTHON} on "
                     "manylinux x86_64, and the package index must be reachable from this host", log, also=("pip",))


def runtime_context(cache: Path, log=print) -> tuple[Path, str]:
    """A folder holding the generic image's Dockerfile, wheels/ and kiln/; returns it and its content hash."""
    root = source_root()
    wheels = download_wheels(cache, log)
    sources = [root / "kiln" / name for name in RUNTIME_SOURCES]
    digest = json_sha256({"dockerfile": (root / "runtime_image" / "Dockerfile").read_text(),
                          "wheels": wheels.name,
                          "kiln": {p.name: tree_files(p) if p.is_dir() else json_sha256(p.read_text())
                                   for p in sources}})[:12]
    folder = cache / "contexts" / f"runtime-{digest}"
    if not (folder / "Dockerfile").is_file():
        with atomic_dir(folder, existing="replace") as staged:
            (staged.path / "wheels").mkdir(parents=True)
            for wheel in wheels.iterdir():
                _link_or_copy(wheel, staged.path / "wheels" / wheel.name)
            for src in sources:
                if src.is_dir():
                    shutil.copytree(src, staged.path / "kiln" / src.name,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    (staged.path / "kiln").mkdir(exist_ok=True)
                    shutil.copy2(src, staged.path / "kiln" / src.name)
            shutil.copy2(root / "runtime_image" / "Dockerfile", staged.path / "Dockerfile")
    return folder, digest


def model_context(artifact: Path, files: list[str], deps: Path | None = None) -> io.BytesIO:
    """A tar of model.Dockerfile (as Dockerfile), the artifact's FILES under artifact/ and the program's
    requirements under deps/ (wheels, requirements.txt and constraints.txt; only an empty requirements.txt
    when there are none): a custom context."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(source_root() / "runtime_image" / "model.Dockerfile", arcname="Dockerfile")
        for rel in sorted(files):
            tar.add(artifact / rel, arcname=f"artifact/{rel}", recursive=False)
        if deps is not None:
            for wheel in sorted(deps.iterdir()):
                tar.add(wheel, arcname=f"deps/{wheel.name}", recursive=False)
        else:
            info = tarfile.TarInfo("deps/requirements.txt")
            tar.addfile(info, io.BytesIO(b""))
    buf.seek(0)
    return buf


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
