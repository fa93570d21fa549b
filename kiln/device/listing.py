"""`python -m kiln.device.listing HOST:PORT [...]`: the keys each tracker has, how many devices under each (free
and busy), and what one free device of each key says of itself, as JSON on stdout.

The web service shows this (its process imports no TVM, so it runs this one); a busy key is listed without a
description rather than waited for.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kiln.device.address import tracker_address
from kiln.errors import KilnError

DESCRIBE_WAIT_S = 3.0  # a key whose devices are all busy is not waited for


def listing(tracker: str) -> dict[str, Any]:
    from tvm import rpc

    from kiln.device.client import Session

    host, port = tracker_address(tracker)
    try:
        summary = rpc.connect_tracker(host, port).summary()
    except Exception as exc:
        return {"tracker": tracker, "error": f"cannot reach the RPC tracker: {type(exc).__name__}: {exc}", "keys": []}
    keys: dict[str, dict[str, Any]] = {}
    for server in summary.get("server_info", []):
        key = str(server.get("key", "")).removeprefix("server:")
        keys.setdefault(key, {"key": key, "devices": 0, "addresses": []})
        keys[key]["devices"] += 1
        keys[key]["addresses"].append(":".join(map(str, server.get("addr", []))))
    for key, entry in keys.items():
        queue = summary.get("queue_info", {}).get(key, {})
        entry["free"], entry["waiting"] = queue.get("free", 0), queue.get("pending", 0)
        try:
            session = Session((host, port), key, timeout=DESCRIBE_WAIT_S)
            try:
                entry["description"] = session.describe()
            finally:
                session.close()
        except Exception as exc:
            entry["description"] = None
            entry["note"] = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return {"tracker": tracker, "keys": sorted(keys.values(), key=lambda e: e["key"])}


def main(argv: list[str]) -> int:
    try:
        print(json.dumps([listing(t) for t in argv]))
    except KilnError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
