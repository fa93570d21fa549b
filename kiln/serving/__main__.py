"""`python -m kiln.serving ARTIFACT`: the runtime image's entry point (argparse, no CLI framework needed)."""

from __future__ import annotations

import argparse
import sys

from kiln.config import settings
from kiln.errors import KilnError


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = settings()
    except KilnError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    parser = argparse.ArgumentParser(prog="kiln.serving", description="Serve a kiln artifact over gRPC and HTTP.")
    parser.add_argument("artifact", help="artifact folder (the image's is /models/current)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=cfg.port)
    parser.add_argument("--http-port", type=int, default=cfg.http_port, help="REST v2 and /metrics; -1: none")
    parser.add_argument("--workers", type=int, default=cfg.workers)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-message-mb", type=float, default=16.0)
    parser.add_argument("--no-log-requests", dest="log_requests", action="store_false")
    args = parser.parse_args(argv)
    from kiln.serving.server import serve

    try:
        serve(args.artifact, host=args.host, port=args.port, workers=args.workers, threads=args.threads,
              max_message_mb=args.max_message_mb, log_requests=args.log_requests,
              http_port=None if args.http_port < 0 else args.http_port)
    except KilnError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
