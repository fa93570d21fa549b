"""Running a build for a CPU above this host on an emulated one: qemu-user (`qemu-x86_64 -cpu MODEL`).

qemu-user 7.2 emulates x86 up to AVX2 (no AVX-512, no AVX-VNNI, no AMX), tens of times slower than the host: it
can tell whether a build for an x86-64-v3 CPU gives the right outputs on an SSE4.2-only host, never how fast it
is. Which CPU models it offers, and what each one answers to CPUID, depend on its version, so both are asked of
the installed qemu (kiln.runtime.cpu_flags run under each model), not written down here.

A function runs emulated in a fresh Python process under qemu (`python -m kiln.optimize.emulation IN OUT`): its
arguments and its result or exception travel as pickles in files, since libraries print on stdout.
"""

from __future__ import annotations

import functools
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kiln.optimize.isolation import IsolationError, ended

T = TypeVar("T")
# qemu's CPU models, least capable first: an SSE4.2 Intel, an AVX2 Intel without TSX (TCG lacks it), an AVX2 AMD,
# then everything TCG emulates
MODELS = ("Nehalem", "Haswell-noTSX", "EPYC-Milan", "max")
PROBE = "from kiln.runtime.cpu_flags import this_cpu; print(' '.join(sorted(this_cpu().flags)))"


def qemu() -> str | None:
    return shutil.which("qemu-x86_64")


@functools.cache
def flags(model: str) -> frozenset[str]:
    """The CPU flags qemu's `model` offers, as kiln reads them (empty when qemu or the model is missing)."""
    exe = qemu()
    if exe is None:
        return frozenset()
    try:
        proc = subprocess.run([exe, "-cpu", model, sys.executable, "-c", PROBE], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(proc.stdout.split()) if proc.returncode == 0 else frozenset()


def cpu_for(requires: list[str] | set[str]) -> str | None:
    """The least capable qemu CPU model that offers every flag in `requires`; None when qemu is not installed
    or emulates none that does (AVX-512, VNNI, AMX)."""
    return next((m for m in MODELS if set(requires) <= flags(m)), None) if qemu() else None


def run_emulated(model: str, fn: Callable[..., T], *args: Any, what: str, timeout: float | None = None) -> T:
    """fn(*args) in a Python process on qemu's CPU `model`: its result, its own exception, or an IsolationError
    naming `what` and how the process ended (an illegal instruction here means the build uses a flag the model
    lacks)."""
    exe = qemu()
    if exe is None:
        raise IsolationError(f"{what}: qemu-x86_64 is not installed", hint="install Debian's qemu-user")
    with tempfile.TemporaryDirectory(prefix="kiln-qemu-") as tmp:
        given, back = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
        given.write_bytes(pickle.dumps((fn, args)))
        try:
            proc = subprocess.run([exe, "-cpu", model, sys.executable, "-m", __name__, str(given), str(back)],
                                  capture_output=True, text=True, timeout=timeout, cwd=tmp,  # qemu's core dumps
                                  preexec_fn=_no_core_dumps)
        except subprocess.TimeoutExpired:
            raise IsolationError(f"{what} did not finish within {timeout:g} s on qemu's {model}") from None
        if not back.is_file():
            tail = "; ".join(line for line in proc.stderr.splitlines()[-3:] if "TCG doesn't support" not in line)
            raise IsolationError(f"{what} {ended(proc.returncode)} on qemu's {model}" + (f": {tail}" if tail else ""))
        status, value = pickle.loads(back.read_bytes())
    if status == "ok":
        return value
    raise value


def _no_core_dumps() -> None:
    """qemu-user dumps a core for a guest's SIGILL (qemu_python_*.core, the size of the process)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _main(given: str, back: str) -> None:
    fn, args = pickle.loads(Path(given).read_bytes())
    try:
        out: tuple[str, Any] = ("ok", fn(*args))
    except Exception as exc:
        out = ("error", exc)
    try:
        data = pickle.dumps(out)
    except Exception:  # an exception that does not pickle travels as text
        data = pickle.dumps(("error", RuntimeError(f"{type(out[1]).__name__}: {out[1]}")))
    Path(back).write_bytes(data)


if __name__ == "__main__":
    _main(*sys.argv[1:3])
