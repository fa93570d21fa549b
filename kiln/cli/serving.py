"""`kiln serve` and `kiln client`: an artifact behind gRPC and HTTP, and a request sent to one."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from kiln.artifact.manifest import Manifest
from kiln.artifact.store import resolve
from kiln.cli.app import app, err, fail
from kiln.cli.artifacts import pull_to_store
from kiln.errors import KilnError


@app.command()
def serve(
    artifact: str = typer.Argument(..., help="artifact folder, or NAME[/ID] in the store"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8001, min=0, max=65535, help="gRPC port (0: any free port)"),
    http_port: int = typer.Option(8000, min=-1, max=65535,
                                  help="HTTP port: the v2 REST routes and /metrics (0: any free port; -1: none)"),
    workers: int = typer.Option(1, min=1, help="model instances that run requests in parallel"),
    max_message_mb: float = typer.Option(16.0, min=0.001, help="largest request/response in MiB"),
    threads: int | None = typer.Option(None, min=1, help="threads per model instance [default: cores / workers]"),
    log_requests: bool = typer.Option(True, help="one JSON line per request on stderr"),
    max_queue_delay_us: int = typer.Option(0, min=0, help="dynamic batching: how long a request may wait for others "
                                                          "to share its model call (0: off); the model's first axis "
                                                          "must be a dynamic batch"),
    max_batch: int = typer.Option(0, min=0, help="dynamic batching: most rows in one call [default: the batch "
                                                 "dimension's upper end]"),
) -> None:
    """Serve an artifact: over gRPC the program's protocol, the v2 tensor protocol (KServe / Triton), health and
    reflection; over HTTP the v2 REST routes and Prometheus metrics (/metrics).

    ARTIFACT may be s3://BUCKET/PREFIX/NAME[/ID]: it is pulled into the local store and verified first."""
    from kiln.serving.server import serve as run_server

    try:
        if artifact.startswith("s3://"):
            artifact = str(pull_to_store(artifact, None))
        from kiln.serving.batching import BatchingConfig

        run_server(artifact, host=host, port=port, workers=workers, max_message_mb=max_message_mb, threads=threads,
                   log_requests=log_requests, http_port=None if http_port < 0 else http_port,
                   batching=BatchingConfig(max_batch=max_batch, max_queue_delay_us=max_queue_delay_us))
    except KilnError as exc:
        fail(exc)


@app.command()
def client(
    artifact: str = typer.Argument(..., help="artifact folder (for its protocol), or NAME[/ID] in the store"),
    address: str = typer.Option("127.0.0.1:8001", help="HOST:PORT of a kiln server"),
    request: Path = typer.Option(..., exists=True, dir_okay=False, help="the request message as JSON"),
) -> None:
    """Send REQUEST (the program's request message in protobuf's JSON mapping) and print the response."""
    import grpc
    from google.protobuf import json_format

    from kiln.serving.client import connect

    try:
        with connect(address, artifact=artifact, ready_timeout=10) as c:
            text = request.read_text()
            if c.Request is None:  # generic tensor protocol: {"inputs": {name: nested lists}}
                import numpy as np

                spec = {s.name: s.dtype for s in _manifest_of(artifact).inputs}
                feed = {k: np.asarray(v, dtype=spec.get(k)) for k, v in json.loads(text)["inputs"].items()}
                print(json.dumps({"outputs": {k: v.tolist() for k, v in c.infer(feed).items()}}))
                return
            try:
                message = json_format.Parse(text, c.Request())
            except json_format.ParseError as exc:
                raise KilnError(f"not a valid {c.Request.DESCRIPTOR.full_name}: {exc}", where=str(request)) from None
            print(json_format.MessageToJson(c.predict(message), preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True))
    except KilnError as exc:
        fail(exc)
    except grpc.FutureTimeoutError:
        fail(KilnError(f"no kiln server answers at {address}", hint="start one with `kiln serve ARTIFACT`"))
    except grpc.RpcError as exc:
        err.print(f"[bold red]error:[/] {exc.code().name}: {escape(exc.details() or '')}", soft_wrap=True)
        raise typer.Exit(1) from None


def _manifest_of(artifact: str):
    return Manifest.read(resolve(artifact))


