"""`python -m kiln.device --tracker HOST:PORT --key KEY`: serve this machine's measurements to kiln over TVM's RPC
until SIGTERM or Ctrl-C (argparse: the runtime image has no CLI framework)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from kiln.errors import KilnError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln.device", description=__doc__.splitlines()[0])
    parser.add_argument("--tracker", required=True, help="the RPC tracker, HOST:PORT")
    parser.add_argument("--key", required=True, help="the device key the optimizer asks the tracker for")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=9090, help="first port to try (up to 9199)")
    args = parser.parse_args(argv)
    from kiln.device.address import tracker_address
    from kiln.device.functions import cores
    from kiln.device.server import Device

    # trials (MetaSchedule's RPCRunner) and kiln's rounds run with as many threads as this process has cores
    os.environ.setdefault("TVM_NUM_THREADS", str(cores()))

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        device = Device(tracker_address(args.tracker), args.key, host=args.host, port=args.port)
    except KilnError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    print(f"device {args.key} on {device.host}:{device.port}, registered with the tracker {args.tracker}",
          flush=True)
    try:
        stop.wait()
    finally:
        device.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
