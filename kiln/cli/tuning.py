"""`kiln tuning`: the TVM tuning databases on this machine, per CPU and per model."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from kiln.cli.app import app, wide


@app.command()
def tuning(as_json: bool = typer.Option(False, "--json", help="print the list as JSON")) -> None:
    """List the tuning databases: the one shared by every model tuned on each CPU (TVM version, CPU, ISA
    features, cores: records of another CPU are never applied) and each model's own."""
    from kiln.optimize.compile import tuning_databases

    found = tuning_databases()
    if as_json:
        typer.echo(json.dumps(found, indent=1))
        return
    table = Table(title="tuning databases")
    for col in ("kind", "cpu", "workloads", "records", "MB", "folder"):
        table.add_column(col, overflow="fold")
    for d in found:
        fp = d["fingerprint"]
        cpu = f"{fp['mcpu']}, {fp['cores']} cores, TVM {fp['tvm']}" if fp else "-"
        table.add_row(d["kind"], cpu, str(d["workloads"]), str(d["records"]), f"{d['bytes'] / 1e6:.1f}", d["folder"])
    wide().print(table if found else "no tuning databases yet: `kiln optimize` with the tvm candidate makes them")
