"""`kiln` command line: a thin layer over the flows and the SDK (like mlc-llm's CLI over its interface).

One module per command group registers on the shared typer app; `main` is the console script."""

from __future__ import annotations

import sys

from rich.markup import escape

from kiln.cli.app import app, err
from kiln.errors import KilnError

# registration, in the order `kiln --help` lists the commands
# isort: off
from kiln.cli import optimize, serving, artifacts, tuning, targets, devices, service  # noqa: E402, F401
# isort: on


def main() -> None:
    try:
        app()
    except KilnError as exc:  # anything that slipped past a command's own handler
        err.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


__all__ = ["app", "main"]
