"""`kiln` command line: a thin layer over the flows and the SDK (like mlc-llm's CLI over its interface).

One module per command group registers on the shared typer app; `main` is the console script."""

from __future__ import annotations

import sys

from rich.markup import escape

from kiln.cli import artifacts, optimize, service, serving  # noqa: F401  (registration)
from kiln.cli.app import app, err
from kiln.errors import KilnError


def main() -> None:
    try:
        app()
    except KilnError as exc:  # anything that slipped past a command's own handler
        err.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


__all__ = ["app", "main"]
