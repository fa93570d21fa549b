"""One tuning database per CPU, shared by every model tuned on it.

MetaSchedule finds a record by its workload's structural hash (the fused kernel's TIR, shapes included, not
the weights), so the same convolution or matmul in another model, or in the next version of the same model,
can start from a kernel already tuned. Its database ignores the target (apache/tvm#15549), so kiln keeps one
per CPU fingerprint (TVM version, LLVM's name for the CPU, the ISA features that change code generation, the
cores, how trials are measured) and never applies another fingerprint's records: these machines alternate
between AMD EPYC and Intel Xeon with AMX, and a schedule tuned on one is neither valid nor fast on the other.

Flow: before tuning, each task whose workload the model's own database lacks gets the shared database's best
records (the model's own records come first); after tuning, the model's best records per workload are merged
into the shared one. Both run under an exclusive file lock, so concurrent runs are safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from kiln.artifact.target import Target
from kiln.compiler.database import DB_FILES, MEASUREMENT

# flags that change what LLVM may emit for these kernels
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "sse4_2")
TOP_K = 8  # records per workload kept in and seeded from the shared database
FAILED_SECS = 1e9  # MetaSchedule records a failed build or run as 1e10 seconds


def fingerprint(target: Target, cores: int | None = None, host_mcpu: str | None = None) -> dict:
    """The CPU a record was tuned for and measured on: the target's LLVM CPU, features and this machine's cores;
    for another target than the host, also the host that timed its trials (another host's timings of the same
    code are other records)."""
    import tvm

    print_ = {"tvm": tvm.__version__, "mcpu": target.mcpu, "cores": cores or os.cpu_count() or 1,
              "isa": [f for f in ISA_FLAGS if f in target.requires], "measurement": MEASUREMENT}
    if target.mattr:
        print_["mattr"] = list(target.mattr)
    if not target.is_host:
        print_["measured_on"] = host_mcpu or tvm.target.codegen.llvm_get_system_cpu()
    return print_


def folder_for(root: Path, print_: dict) -> Path:
    """root/<tvm version>/<mcpu>-<cores>c-<hash of the whole fingerprint>."""
    digest = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:10]
    return root / print_["tvm"] / f"{print_['mcpu']}-{print_['cores']}c-{digest}"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    from kiln.compiler.int8.intrinsics import register_all

    register_all()  # records of int8 kernels name kiln's intrinsics
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(folder))


def _valid(record) -> bool:
    secs = [float(getattr(s, "value", s)) for s in (record.run_secs or [])]
    return bool(secs) and min(secs) < FAILED_SECS


def _replays(trace, mod) -> bool:
    """Whether a record's trace applies to `mod`. Databases match workloads by structure, which ignores block
    names, but a trace finds its blocks by name: ResNet-34's global pooling reduce is `lv157_red` where
    ResNet-18's is `lv85_red`. Such a record, copied, made the database unloadable (MetaSchedule replays every
    trace when it loads one: "parallel_for_dynamic error") and the model's build failed."""
    from tvm import s_tir

    try:
        trace.apply_to_schedule(s_tir.Schedule(mod), remove_postproc=False)
    except Exception:
        return False
    return True


def _copy_best(source, dest, mod, skip_known: bool) -> int:
    """Commit `source`'s best valid records of workload `mod` to `dest`; with `skip_known`, those `dest` already
    holds (by their trace) are skipped. Returns how many were committed."""
    from tvm.s_tir import meta_schedule as ms

    best = [r for r in source.get_top_k(source.commit_workload(mod), TOP_K) if _valid(r)]
    if not best:
        return 0
    target = dest.commit_workload(mod)
    known = {str(r.trace.as_json()) for r in dest.get_top_k(target, 10 * TOP_K)} if skip_known else set()
    fresh = [r for r in best if str(r.trace.as_json()) not in known and _replays(r.trace, target.mod)]
    for r in fresh:
        dest.commit_tuning_record(ms.database.TuningRecord(r.trace, target, r.run_secs, r.target, r.args_info))
    return len(fresh)


def seed(own: Path, shared: Path, workloads: list) -> int:
    """Copy the shared best records of each workload (an IRModule) the model's own database has none of;
    returns how many records were copied."""
    if not (shared / DB_FILES[1]).is_file():
        return 0
    with locked(shared):
        source, dest = _open(shared), _open(own)
        return sum(_copy_best(source, dest, mod, skip_known=False) for mod in workloads
                   if source.has_workload(mod)
                   and not (dest.has_workload(mod) and dest.get_top_k(dest.commit_workload(mod), 1)))


def merge(own: Path, shared: Path, workloads: list | None = None) -> int:
    """Add the model's best records of each workload (default: every workload of its database) to the shared
    database (records it already holds, by their trace, are skipped); returns how many were added."""
    if not (own / DB_FILES[1]).is_file():
        return 0
    with locked(shared):
        source, dest = _open(own), _open(shared)
        if workloads is None:
            from tvm_ffi import structural_hash

            seen = {}
            for r in source.get_all_tuning_records():
                seen.setdefault(structural_hash(r.workload.mod), r.workload.mod)
            workloads = list(seen.values())
        return sum(_copy_best(source, dest, mod, skip_known=True) for mod in workloads if source.has_workload(mod))


def _median(record) -> float:
    secs = sorted(float(getattr(s, "value", s)) for s in record.run_secs)
    return secs[len(secs) // 2]


def as_stored(folder: Path, extracted: list) -> tuple[list, list[float | None]]:
    """The tasks, each whose workload the database holds as that stored workload (the same kernel, its blocks
    named as when first tuned), and each one's best valid latency there (the median of a record's runs, as the
    tuner counts it; None where it has none). A database matches workloads by structure, ignoring block names,
    but commits a new record under the stored workload with the trace of the task that made it: a layer norm's
    `lv108_sum` under the workload that names it `lv8_sum` (the same norm in another layer or graph variant).
    MetaSchedule replays every trace when it loads a database, so one such record made it unloadable
    ("parallel_for_dynamic error") and every later build from it failed. Tuned as stored, a task's traces name
    the stored blocks. One load of the database (seconds for a large one) serves both."""
    if not (folder / DB_FILES[0]).is_file() or not extracted:
        return extracted, [None] * len(extracted)
    from tvm.s_tir import meta_schedule as ms

    db = _open(folder)
    tasks, best = [], []
    for task in extracted:
        mod = task.dispatched[0]
        records = []
        if db.has_workload(mod):
            stored = db.commit_workload(mod)
            task = ms.ExtractedTask(task.task_name, stored.mod, task.target, [stored.mod], task.weight)
            records = [r for r in db.get_top_k(stored, TOP_K) if _valid(r)]
        tasks.append(task)
        best.append(min(map(_median, records)) if records else None)
    return tasks, best


def describe(folder: Path) -> dict:
    """A shared database's fingerprint, workloads and records, read from its files (no TVM needed)."""
    def lines(name: str) -> int:
        try:
            with open(folder / name, "rb") as f:
                return sum(1 for line in f if line.strip())
        except OSError:
            return 0

    try:
        print_ = json.loads((folder / "fingerprint.json").read_text())
    except (OSError, ValueError):
        print_ = {}
    return {"folder": str(folder), "fingerprint": print_, "workloads": lines(DB_FILES[0]),
            "records": lines(DB_FILES[1]), "bytes": sum(f.stat().st_size for f in folder.glob("*.json"))}


def ensure(root: Path, print_: dict) -> Path:
    """The fingerprint's folder, with fingerprint.json written once so `kiln tuning` can say whose it is."""
    folder = folder_for(root, print_)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "fingerprint.json").is_file():
        tmp = folder / f"fingerprint.json.{os.getpid()}"
        tmp.write_text(json.dumps(print_, indent=1, sort_keys=True))
        tmp.replace(folder / "fingerprint.json")
    return folder
