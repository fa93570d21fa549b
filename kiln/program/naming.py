"""Names and shapes as users type them: `--shape input=1x3x224x224`, and model names safe everywhere."""

from __future__ import annotations

import re

from kiln.errors import ProgramError

_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def parse_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """Parse `name=1x3x224x224` items (the CLI's --shape, the web form's shapes field)."""
    out: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = [int(d) for d in dims.lower().split("x")]
            if any(d <= 0 for d in out[name]):
                raise ValueError
        except ValueError:
            raise ProgramError(f"cannot read shape {item!r}", hint="write it as NAME=DxDxD, e.g. "
                               "input=1x3x224x224, with positive dimensions") from None
    return out


def clean_name(name: str) -> str:
    """A model name safe as a folder, an S3 key part and an image name: letters, digits, '.', '_', '-'."""
    return _NAME_RE.sub("-", name).strip("-.") or "model"
