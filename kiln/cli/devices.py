"""`kiln device` and `kiln tracker`: a machine that serves kiln's measurements over TVM's RPC, and the tracker
devices register with (TVM's own: any TVM tracker works)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import typer

from kiln.cli.app import app


@app.command()
def device(tracker: str = typer.Option(..., help="the RPC tracker, HOST:PORT"),
           key: str = typer.Option(..., help="the device key the optimizer asks the tracker for"),
           host: str = typer.Option("127.0.0.1", help="address to listen on (RPC has no authentication: loopback "
                                                     "unless the network is trusted)"),
           port: int = typer.Option(9090, min=1, max=65535, help="first port to try (up to 9199)")) -> None:
    """Serve this machine's measurements (its CPU, and candidates timed on it) over TVM's RPC, registered with the
    tracker under KEY, until SIGTERM or Ctrl-C. The same as `python -m kiln.device` (the runtime image's form)."""
    from kiln.device.__main__ import main

    raise typer.Exit(main(["--tracker", tracker, "--key", key, "--host", host, "--port", str(port)]))


@app.command()
def tracker(host: str = typer.Option("127.0.0.1", help="address to listen on"),
            port: int = typer.Option(9190, min=1, max=65535, help="port to listen on")) -> None:
    """Run TVM's RPC tracker (`python -m tvm.exec.rpc_tracker`) in the foreground: devices register with it under
    their keys, and `kiln optimize --device KEY@HOST:PORT` finds them there. SIGTERM or Ctrl-C stops it (TVM's
    tracker serves from a child process that outlives a signal to its parent alone, so the whole group is
    stopped)."""
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
                             "--port-end", str(port + 1)], start_new_session=True)

    def stop(*_) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        code = proc.wait()
    finally:
        stop()
    raise typer.Exit(0 if code in (0, -signal.SIGTERM) else code)
