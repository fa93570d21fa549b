"""The typer app every command module registers on, and how the CLI talks to a person: a private stderr
console, errors printed as plain text (no traceback for a user's mistake), tables of candidates."""

from __future__ import annotations

import os
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.errors import GateError, KilnError

# help texts are plain text: `NAME[/ID]` would be a (broken) closing tag to rich's markup parser
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="kiln: optimize an ONNX model ahead of time, gated by your metrics.")


def _console() -> Console:
    # a private copy of stderr: tuning redirects fds 1/2 to a log file, the progress bar must stay visible
    return Console(file=os.fdopen(os.dup(2), "w", buffering=1), stderr=True)


err = _console()


def wide() -> Console:
    """stdout, at least 120 columns (candidate tables are wide)."""
    return Console(width=max(Console().width, 120))


def fail(exc: KilnError) -> NoReturn:
    if isinstance(exc, GateError) and exc.table:
        err.print(exc.table, markup=False, highlight=False, soft_wrap=True)
    err.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def warn(message: str) -> None:
    err.print(f"[yellow]{escape(message)}[/]", highlight=False, soft_wrap=True)


def candidate_table(manifest=None, *, name: str = "", candidates=None, selected: str | None = None):
    """The candidates of a manifest, or of a run that published nothing (`candidates` with `name`): a table of
    the numbers, then each candidate's reasons on lines of their own (a table column squeezes them to
    unreadable slivers in a narrow terminal)."""
    from rich.console import Group
    from rich.text import Text

    from kiln.optimize import report

    if manifest is not None:
        name, candidates, selected = manifest.name, manifest.candidates, manifest.selected
    rows = report.rows(candidates, selected)
    table = Table(title=f"{name}: candidates (* = {'published' if manifest is not None else 'kept'})",
                  caption="ranges: " + "; ".join(report.ranges(candidates)))
    hidden = {"backend", "why not", "notes", "p10-p90 ms"}  # the name says the backend; the speed-up its interval
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in hidden]
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(r.get(c, "") for c in cols), style="bold green" if r["candidate"].endswith("*") else None)
    parts = [table]
    for title, field in (("why not:", "reasons"), ("notes:", "notes")):
        lines = [f"{c.name}: {'; '.join(getattr(c, field))}" for c in candidates if getattr(c, field)]
        if lines:
            parts += [Text(title, style="bold"), Text("\n".join(lines))]
    return Group(*parts) if len(parts) > 1 else table
