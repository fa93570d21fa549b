"""MetaSchedule's tuning database: its files, and how many records it holds.

The database is two JSON files in a work folder. MetaSchedule finds records by the workload's structural
hash and ignores the target, so the folder must be kept apart per target by its owner.
"""

from __future__ import annotations

from pathlib import Path

DB_FILES = ("database_workload.json", "database_tuning_record.json")
# How trials are measured. A record's latency is comparable only with records measured the same way, so it is
# part of every database's folder and every build's key. 3: float inputs uniform in [-0.5, 0.5], not TVM's
# [1, 10] (erf/exp saturated there and were timed on their fast path). 2: trials on all the target's cores with
# integer inputs in range (revision 1 measured on TVM's default of half the cores, 1 on these 2-core VMs).
MEASUREMENT = 3


def count_records(db_dir: Path) -> int:
    try:
        with open(db_dir / DB_FILES[1], "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
