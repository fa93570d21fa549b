"""MetaSchedule's RPCRunner for kiln's devices (kiln.device): every trial built here and timed on a device
registered with a TVM RPC tracker under a key, as many at once as the key has devices.

TVM's own session factory waits for a free device without bound (TrackerSession.request has no timeout) and,
when the key has no device left, waits forever. kiln's asks the tracker first: no device under the key is a
failed trial that says so (NO_DEVICE_LEFT, which stops the search: kiln.compiler.tuning), a busy key is waited
for `wait_s` at most, and the device ends the session after `session_timeout_s` whatever happens to this side.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

NO_DEVICE_LEFT = "no device left under the key"


@dataclass(frozen=True)
class RpcDevices:
    """The devices that time the trials."""

    host: str
    port: int
    key: str
    wait_s: float = 60.0  # for a free device, per trial
    devices: int = 1  # registered under the key: trials timed at once
    measured_on: str = ""  # the device's fingerprint (kiln.compiler.shared_db: whose records these are)

    @property
    def where(self) -> str:
        return f"{self.key}@{self.host}:{self.port}"


def create_session(devices: RpcDevices, config):
    """A session with a free device under the key (in the runner's worker process), or an error naming why not."""
    from tvm import rpc

    from kiln.device.client import devices as registered

    client = rpc.connect_tracker(devices.host, devices.port)
    if not registered(client, devices.key):
        raise RuntimeError(f"{NO_DEVICE_LEFT} {devices.key!r} at the tracker {devices.host}:{devices.port}")
    client._sock.settimeout(devices.wait_s)  # the tracker answers only once a device is free
    return client.request(devices.key, priority=0, session_timeout=config.session_timeout_sec, max_retry=1)


def runner(devices: RpcDevices, evaluator_config, session_timeout_s: float):
    from tvm.s_tir import meta_schedule as ms

    config = ms.runner.RPCConfig(tracker_host=devices.host, tracker_port=devices.port, tracker_key=devices.key,
                                 session_priority=0, session_timeout_sec=int(session_timeout_s))
    return ms.runner.RPCRunner(config, evaluator_config, f_create_session=functools.partial(create_session, devices),
                               max_workers=devices.devices)
