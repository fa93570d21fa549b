"""Start and stop a device: TVM's RPC server registered with a tracker under a key, kiln's functions in it."""

from __future__ import annotations

import functools
import logging
import socket
import tempfile
from pathlib import Path

from kiln.device.functions import register
from kiln.errors import DeviceError

_log = logging.getLogger("kiln.device")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Device:
    """A running device (its RPC server process and the sessions it forks), until `stop`."""

    def __init__(self, tracker: tuple[str, int], key: str, host: str = "127.0.0.1", port: int = 9090,
                 port_end: int = 9199, state: Path | None = None):
        from tvm import rpc

        try:  # TVM's server would retry in a thread for a minute and then serve no one
            socket.create_connection(tracker, timeout=5).close()
        except OSError as exc:
            raise DeviceError(f"cannot reach the RPC tracker at {tracker[0]}:{tracker[1]}: {exc}",
                              hint=f"start one there: kiln tracker --host {tracker[0]} --port {tracker[1]}") from None
        if host not in LOOPBACK:
            _log.warning("listening on %s: TVM's RPC has no authentication, anyone who reaches port %d can run "
                         "code here; keep it on a trusted network", host, port)
        self.state = state or Path(tempfile.mkdtemp(prefix="kiln-device-"))
        self.key, self.tracker = key, tracker
        self._server = rpc.Server(host=host, port=port, port_end=port_end, tracker_addr=tracker, key=key,
                                  silent=True, server_init_callback=functools.partial(register, str(self.state)))
        self.host, self.port = host, self._server.port

    def stop(self) -> None:
        """Kill the server process and every session it forked; the tracker drops the key's entry."""
        if self._server is not None:
            self._server.terminate()
            self._server = None
