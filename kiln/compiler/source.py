"""The compiler's own code as one hash, part of every build's cache key.

kiln's version number is its package metadata, the same for every commit of a checkout: keyed on it alone, a
build made before a pass or a schedule changed was returned after it ("reusing the build ... no tuning"), and
a benchmark of the change measured the old code. Tuning records need no such key: MetaSchedule matches them by
the kernel's own TIR, so the records of kernels a change left alone still apply."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.cache
def fingerprint() -> str:
    """sha256 of kiln.compiler's Python files (paths and contents), 16 hex digits."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
