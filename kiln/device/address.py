"""Where a device is: its tracker (HOST:PORT) and the key it registered under (KEY@HOST:PORT), checked as typed."""

from __future__ import annotations

import re

from pydantic import BaseModel

from kiln.errors import DeviceError

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def tracker_address(text: str) -> tuple[str, int]:
    """HOST:PORT, checked (a DeviceError that shows the form otherwise)."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeviceError(f"tracker address {text!r} is not HOST:PORT", hint="e.g. --tracker 127.0.0.1:9190")
    return host, int(port)


class DeviceAddress(BaseModel):
    """The devices registered under `key` with the RPC tracker at host:port."""

    key: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DeviceAddress:
        key, at, tracker = text.strip().partition("@")
        if not at or not _KEY.match(key):
            raise DeviceError(f"device {text!r} is not KEY@HOST:PORT",
                              hint="name the key the devices registered under and their tracker, e.g. --device "
                                   "edge1@127.0.0.1:9190")
        host, port = tracker_address(tracker)
        return cls(key=key, host=host, port=port)

    @property
    def tracker(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.key}@{self.tracker}"
