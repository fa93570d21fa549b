"""Retry policy for tasks that talk to outside services: retry only what a retry can fix."""

from __future__ import annotations

from kiln.errors import ServiceError


def transient_only(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry a ServiceError marked transient (unreachable, 5xx), nothing else."""
    try:
        state.result()
    except ServiceError as exc:
        return exc.transient
    except Exception:
        return False
    return False
