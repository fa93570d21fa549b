"""kiln as a service on this machine: `kiln up` / `kiln down` (kiln.service.supervisor)."""

from kiln.service.supervisor import ServiceConfig, down, up

__all__ = ["ServiceConfig", "down", "up"]
