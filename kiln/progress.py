"""A tiny in-process progress bus: tasks report, whoever listens (the CLI's rich bar) renders.

Tasks also publish Prefect progress artifacts for the UI; this bus is what the terminal sees.
"""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[str, float, float | None, str], None]
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(stage: str, completed: float, total: float | None = None, message: str = "") -> None:
    for listener in list(_listeners):
        try:
            listener(stage, completed, total, message)
        except Exception:
            pass  # a broken display must never break a run
