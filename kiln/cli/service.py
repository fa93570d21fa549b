"""`kiln up` and `kiln down`: kiln as a service on this machine."""

from __future__ import annotations

from kiln.cli.app import app, err, fail
from kiln.errors import KilnError


@app.command()
def up() -> None:
    """Start kiln as a service: Prefect server, work pool and deployments, a worker, the web app (127.0.0.1)."""
    from kiln import service

    try:
        urls = service.up(log=lambda m: err.print(m, highlight=False))
    except KilnError as exc:
        fail(exc)
    print(f"Prefect UI:  {urls['ui']}\nweb form:    {urls['web']}  (token: {urls['token']})\n"
          f"webhooks:    {urls['web']}/webhooks/mlflow  {urls['web']}/webhooks/huggingface\n"
          "stop with `kiln down` (`make down`)")


@app.command()
def down() -> None:
    """Stop exactly what `kiln up` started."""
    from kiln import service

    stopped = service.down(log=lambda m: err.print(m, highlight=False))
    if not stopped:
        err.print("nothing kiln started is running")


