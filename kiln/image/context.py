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

from kiln.checkout import checkout_file
from kiln.errors import ImageError
from kiln.hashing import json_sha256, tree_files

# what `python -m kiln.serving` imports; nothing of the optimizer (prefect, onnx, the TVM compiler)
RUNTIME_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "onnxruntime", "numpy", "pydantic", "protobuf", "grpcio",
                    "grpcio-reflection", "grpcio-health-checking")
IMAGE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_39_x86_64", "manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def source_root() -> Path:
    """The checkout kiln runs from: runtime_image/ lives beside the package, like proto_templates/."""
    return checkout_file("runtime_image/Dockerfile", ImageError, "building images").parents[1]


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


def download_wheels(cache: Path, log=print) -> Path:
    """Wheels for the runtime image (cached by what they pin); returns the folder, with requirements.txt."""
    reqs, pins = requirements(), constraints()
    key = json_sha256({"requirements": reqs, "constraints": pins, "python": IMAGE_PYTHON})[:16]
    folder = cache / "wheels" / key
    if (folder / "requirements.txt").is_file():
        return folder
    staging = folder.with_name(f".{key}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "constraints.txt").write_text("\n".join(pins) + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", IMAGE_PYTHON, *[a for p in PLATFORMS for a in ("--platform", p)],
           "-c", str(staging / "constraints.txt"), "-d", str(staging), *reqs]
    log(f"downloading runtime wheels for Python {IMAGE_PYTHON} into {folder}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise ImageError(f"could not download the runtime wheels:\n{tail}",
                         hint="the package index must be reachable from this host (builds never reach it)",
                         transient=True)
    (staging / "constraints.txt").unlink()
    (staging / "requirements.txt").write_text("\n".join(reqs) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(staging, folder)
    return folder


def runtime_context(cache: Path, log=print) -> tuple[Path, str]:
    """A folder holding the generic image's Dockerfile, wheels/ and kiln/; returns it and its content hash."""
    root = source_root()
    wheels = download_wheels(cache, log)
    kiln_src = root / "kiln"
    digest = json_sha256({"dockerfile": (root / "runtime_image" / "Dockerfile").read_text(),
                          "wheels": wheels.name, "kiln": tree_files(kiln_src)})[:12]
    folder = cache / "contexts" / f"runtime-{digest}"
    if not (folder / "Dockerfile").is_file():
        staging = folder.with_name(f".{folder.name}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "wheels").mkdir(parents=True)
        for wheel in wheels.iterdir():
            _link_or_copy(wheel, staging / "wheels" / wheel.name)
        shutil.copytree(kiln_src, staging / "kiln", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(root / "runtime_image" / "Dockerfile", staging / "Dockerfile")
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)
    return folder, digest


def model_context(artifact: Path, files: list[str]) -> io.BytesIO:
    """A tar of model.Dockerfile (as Dockerfile) and the artifact's FILES under artifact/ (a custom context)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(source_root() / "runtime_image" / "model.Dockerfile", arcname="Dockerfile")
        for rel in sorted(files):
            tar.add(artifact / rel, arcname=f"artifact/{rel}", recursive=False)
    buf.seek(0)
    return buf


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
