"""Files of the kiln checkout that live beside the package, not in it: proto_templates/, runtime_image/,
deployments/. kiln is installed editable (`pip install -e .`, `make setup`), so they are one folder up."""

from __future__ import annotations

from pathlib import Path

from kiln.errors import KilnError

ROOT = Path(__file__).resolve().parents[1]


def checkout_file(relative: str, error: type[KilnError] = KilnError, doing: str = "this") -> Path:
    """ROOT/relative, or a clear error saying that `doing` needs a source checkout."""
    path = ROOT / relative
    if not path.exists():
        raise error(f"{relative} not found next to kiln ({ROOT})",
                    hint=f"{doing} needs a kiln source checkout installed with `pip install -e .` (`make setup`)")
    return path
