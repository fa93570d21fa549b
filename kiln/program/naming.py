"""Names and shapes as users type them: `--shape input=1x3x224x224`, `--dim sequence_length=1..128`, and model
names safe everywhere."""

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


def parse_dim_range(name: str, value: object) -> tuple[int, int]:
    """A dimension's range from `LOW..HIGH`, `N`, (LOW, HIGH) or [LOW, HIGH]: positive, LOW <= HIGH."""
    hint = (f"write it as {name}=LOW..HIGH (e.g. {name}=1..128) or {name}=N for one value; "
            "LOW and HIGH are positive integers")
    try:
        if isinstance(value, str):
            low, sep, high = value.strip().partition("..")
            bounds = (int(low), int(high) if sep else int(low))
        elif isinstance(value, int) and not isinstance(value, bool):
            bounds = (value, value)
        elif isinstance(value, list | tuple) and len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            bounds = (int(value[0]), int(value[1]))
        else:
            raise ValueError
    except ValueError:
        raise ProgramError(f"cannot read the range of dimension {name!r}: {value!r}", hint=hint) from None
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise ProgramError(f"the range of dimension {name!r} is {bounds[0]}..{bounds[1]}: it must hold at least "
                           "one positive value", hint=hint)
    return bounds


def parse_dims(items: list[str] | dict | None) -> dict[str, tuple[int, int]]:
    """Dimension ranges from `NAME=LOW..HIGH` items (the CLI's --dim, the web form's dims field) or a dict
    (program.py's `dims`, a request's JSON). NAME is the model's name for the dimension (its dim_param, such as
    sequence_length) or INPUT:AXIS."""
    if isinstance(items, dict):
        return {str(k): parse_dim_range(str(k), v) for k, v in items.items()}
    out: dict[str, tuple[int, int]] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ProgramError(f"cannot read dimension {item!r}", hint="write it as NAME=LOW..HIGH, e.g. "
                               "sequence_length=1..128 or input_ids:1=1..128")
        out[name.strip()] = parse_dim_range(name.strip(), value)
    return out


def clean_name(name: str) -> str:
    """A model name safe as a folder, an S3 key part and an image name: letters, digits, '.', '_', '-'."""
    return _NAME_RE.sub("-", name).strip("-.") or "model"
