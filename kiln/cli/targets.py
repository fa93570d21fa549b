"""`kiln targets`: the names `--target` accepts, with what each one's code needs and whether it runs here."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from kiln.cli.app import app, wide


@app.command()
def targets(every_cpu: bool = typer.Option(False, "--all", help="also every LLVM x86-64 CPU name"),
            as_json: bool = typer.Option(False, "--json", help="print the list as JSON")) -> None:
    """List the targets kiln compiles for: this host, the x86-64 psABI levels, cloud instance families, TVM's x86
    tags (and with --all every LLVM x86-64 CPU), each with its LLVM CPU, int8 instruction set and vector width."""
    from kiln.compiler.targets import catalog

    rows = catalog(every_cpu)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title="targets (`kiln optimize --target NAME`; cuda: an NVIDIA GPU)")
    for col in ("name", "form", "LLVM CPU", "int8", "vector", "runs here", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["form"], r["mcpu"] or "-", r["int8"], f"{r['vector_bits']}-bit",
                      "yes" if r["runs_here"] else "no" + (f" (qemu -cpu {r['qemu']})" if r["qemu"] else ""),
                      r["source"])
    wide().print(table)
    if not every_cpu:
        wide().print("any LLVM x86-64 CPU name is accepted too (znver3, skylake-avx512, ...): `kiln targets --all`")
