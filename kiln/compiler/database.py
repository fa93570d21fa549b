"""MetaSchedule's tuning database and log, read while and after it tunes: records, failures, live progress.

The database is two JSON files in a work folder. MetaSchedule finds records by the workload's structural
hash and ignores the target, so the folder must be kept apart per target by its owner.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DB_FILES = ("database_workload.json", "database_tuning_record.json")
FAILED_RUN_SECS = 1e9  # MetaSchedule records a build/run failure as 1e10 seconds


def valid_records(db_dir: Path, skip: int) -> int:
    """How many records after the first `skip` hold a real measurement (not a failed build or run)."""
    valid = 0
    try:
        with open(db_dir / DB_FILES[1]) as f:
            for i, line in enumerate(f):
                if i >= skip:
                    secs = json.loads(line)[1][1]
                    valid += bool(secs) and min(secs) < FAILED_RUN_SECS
    except (OSError, ValueError, IndexError, TypeError):
        return 0
    return valid


SCHEDULER_LOG = "logs/tvm.s_tir.meta_schedule.logging.task_scheduler.log"
_SENT = re.compile(rb"Sending (\d+) sample\(s\) to builder")


def samples_sent(db_dir: Path, offset: int) -> int:
    """Trials handed to the builder so far, read from the scheduler log past `offset` (live, unlike the
    database, which MetaSchedule fills only when it joins a task's results on its next visit)."""
    try:
        with open(db_dir / SCHEDULER_LOG, "rb") as f:
            f.seek(offset)
            return sum(int(m) for m in _SENT.findall(f.read()))
    except OSError:
        return 0


def log_size(db_dir: Path) -> int:
    try:
        return (db_dir / SCHEDULER_LOG).stat().st_size
    except OSError:
        return 0


def count_records(db_dir: Path) -> int:
    try:
        with open(db_dir / DB_FILES[1], "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
