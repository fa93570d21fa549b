"""`from kiln.client import connect`: the public client (it lives with the server in kiln.serving)."""

from kiln.serving.client import Client, connect

__all__ = ["Client", "connect"]
