"""The devices the web service lists: each configured tracker's keys and what a device of each says of itself.

Asked of `python -m kiln.device.listing` in a child process: the web process imports no TVM (an import-linter
contract), and a tracker that does not answer must not hold a request for long.
"""

from __future__ import annotations

import asyncio
import json
import sys

LISTING_TIMEOUT_S = 30.0


async def listing(trackers: list[str]) -> list[dict]:
    if not trackers:
        return []
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "kiln.device.listing", *trackers,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), LISTING_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        return [{"tracker": t, "error": f"no answer within {LISTING_TIMEOUT_S:g} s", "keys": []} for t in trackers]
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines()
        return [{"tracker": t, "error": said[-1] if said else f"exit {proc.returncode}", "keys": []}
                for t in trackers]
    return json.loads(out)
