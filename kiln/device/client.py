"""The optimizer's side of a device: find one under a key through the tracker, ask it to describe itself, send it
candidates and inputs to time (kiln.device.functions runs them there)."""

from __future__ import annotations

import json
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from kiln.device.functions import DESCRIBE, MEASURE
from kiln.errors import DeviceError

START = "python -m kiln.device --tracker {host}:{port} --key {key}"


def devices(client, key: str) -> list[dict]:
    """The servers registered with a tracker (tvm.rpc.TrackerSession) under `key`, busy or free."""
    return [s for s in client.summary()["server_info"] if s.get("key") == f"server:{key}"]


class Session:
    """One RPC session with a device under `key` (held until closed: the tracker lends the device to no one else
    meanwhile)."""

    def __init__(self, tracker: tuple[str, int], key: str, timeout: float = 60.0, session_timeout: float = 0):
        from tvm import rpc

        host, port = tracker
        where = f"the tracker {host}:{port}"
        try:
            client = rpc.connect_tracker(host, port)
            registered = devices(client, key)
        except Exception as exc:
            raise DeviceError(f"cannot reach the RPC tracker at {host}:{port}: {exc}",
                              hint=f"start one with `python -m tvm.exec.rpc_tracker --host {host} --port {port}`"
                              ) from None
        if not registered:
            raise DeviceError(f"no device under the key {key!r} at {where}",
                              hint="start one on the target machine: " + START.format(host=host, port=port, key=key))
        self.registered = len(registered)
        client._sock.settimeout(timeout)  # the tracker answers a request only when a device is free: bound the wait
        try:
            self.remote = client.request(key, priority=1, session_timeout=session_timeout, max_retry=1)
        except Exception as exc:
            raise DeviceError(f"the {len(registered)} device(s) under the key {key!r} at {where} stayed busy or did "
                              f"not answer within {timeout:g} s ({type(exc).__name__}: {exc})",
                              hint="raise --device-timeout, or start more devices under the key") from None

    def close(self) -> None:
        """Give the device back to the tracker (the session ends when its last reference goes)."""
        self.remote = None

    def describe(self) -> dict[str, Any]:
        return json.loads(self.remote.get_function(DESCRIBE)())

    def measure(self, candidates: list[dict[str, Any]], feeds: list[dict[str, np.ndarray]], inputs: list[dict],
                outputs: list[dict], profile: dict | None = None, timed: list[int] | None = None,
                repeats: int = 200, seconds: float = 5.0) -> tuple[dict, dict[str, np.ndarray]]:
        """Upload each candidate's file and the feeds, time them there; the device's answer and every output
        (`NAME/FEED/OUTPUT`)."""
        tag = uuid.uuid4().hex[:8]
        with tempfile.TemporaryDirectory(prefix="kiln-device-") as tmp:
            local = Path(tmp) / "feeds.npz"
            np.savez(local, **{f"feed{i}/{n}": v for i, feed in enumerate(feeds) for n, v in feed.items()})
            self.remote.upload(str(local), f"{tag}-feeds.npz")
            sent = []
            for c in candidates:
                path = Path(c["path"])
                if (c.get("settings") or {}).get("buckets"):  # a build per bucket: the files beside it travel too
                    packed = Path(tmp) / f"{c['name']}.tar"
                    with tarfile.open(packed, "w") as tar:
                        tar.add(path.parent, arcname=".")
                    self.remote.upload(str(packed), f"{tag}-{c['name']}.tar")
                    sent.append({**c, "path": f"{tag}-{c['name']}.tar", "member": path.name})
                    continue
                remote_name = f"{tag}-{c['name']}{path.suffix}"
                self.remote.upload(str(path), remote_name)
                sent.append({**c, "path": remote_name})
            request = {"candidates": sent, "feeds": f"{tag}-feeds.npz", "outputs": f"{tag}-outputs.npz",
                       "inputs": inputs, "outputs_specs": outputs, "profile": profile, "timed": timed or [0],
                       "repeats": repeats, "seconds": seconds}
            answer = json.loads(self.remote.get_function(MEASURE)(json.dumps(request)))
            back = Path(tmp) / "outputs.npz"
            back.write_bytes(self.remote.download(request["outputs"]))
            with np.load(back) as data:
                got = {k: data[k] for k in data.files}
        return answer, got
