"""compile: TVM import + MetaSchedule tuning + export, cached by the content hash of its inputs.

The tuning database lives per (target, prepared model) under KILN_HOME/tuning, so a later run with the same
workloads continues from it; a finished build lives under KILN_HOME/cache/tvm/KEY and is never tuned again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from kiln import progress
from kiln.errors import KilnError
from kiln.compiler import DB_FILES
from kiln.hashing import file_sha256, json_sha256
from kiln.loader import kiln_home
from kiln.manifest import versions
from tasks.models import BuiltCandidate, CheckedProgram, PreparedModel

RESULT = "result.json"


def tuning_dir(prepared: PreparedModel, target: str) -> Path:
    """The MetaSchedule database of one (target, prepared model): every run on them adds to it."""
    from kiln.compiler import target_config

    return kiln_home() / "tuning" / json_sha256(json.dumps(target_config(target), sort_keys=True))[:12] / \
        prepared.sha256[:24]


def compile_key(prepared: PreparedModel, target: str, trials: int, max_trials_per_task: int | None,
                continue_from: str | None = None) -> str:
    """Same model, target and budget: the same build. Continuing a search also depends on what the database
    holds now, so a second re-optimization tunes again instead of returning the first one's build."""
    v = versions()
    db = tuning_dir(prepared, target) / DB_FILES[1]
    state = file_sha256(db) if continue_from and db.is_file() else None
    return json_sha256({"model": prepared.sha256, "target": target, "trials": trials, "per_task": max_trials_per_task,
                        "tvm": v["tvm"], "kiln": v["kiln"], "db": state})[:24]


def seed_database(prepared: PreparedModel, target: str, saved: str | None) -> int:
    """Start from an artifact's saved database (tuning/) when this machine has none; returns its records."""
    db_dir = tuning_dir(prepared, target)
    if saved and not (db_dir / DB_FILES[1]).is_file() and (Path(saved) / DB_FILES[1]).is_file():
        db_dir.mkdir(parents=True, exist_ok=True)
        for name in DB_FILES:
            shutil.copy2(Path(saved) / name, db_dir / name)
    records = db_dir / DB_FILES[1]
    return sum(1 for line in records.open() if line.strip()) if records.is_file() else 0


def _cache_dir(key: str) -> Path:
    return kiln_home() / "cache" / "tvm" / key


def _cache_key(context: TaskRunContext, params: dict) -> str | None:
    """Prefect-level cache hit only when the on-disk build it points to is still there.

    The key names the cache folder itself (KILN_HOME included): Prefect's result storage may be shared by
    several KILN_HOMEs, and a record must never point into another one.
    """
    seed_database(params["prepared"], params["target"], params.get("continue_from"))
    key = compile_key(params["prepared"], params["target"], params["trials"], params.get("max_trials_per_task"),
                      params.get("continue_from"))
    folder = _cache_dir(key)
    return f"kiln-compile-{json_sha256(str(folder.resolve()))[:32]}" if (folder / RESULT).is_file() else None


@task(name="compile-tvm", cache_key_fn=_cache_key, persist_result=True)
def compile_tvm(checked: CheckedProgram, prepared: PreparedModel, target: str = "llvm", trials: int = 64,
                max_trials_per_task: int | None = None, continue_from: str | None = None) -> BuiltCandidate:
    """continue_from: an artifact's tuning/ folder, the search to continue where this machine has none."""
    from kiln.compiler import compile_model, device_for, target_config

    logger = get_run_logger()
    records = seed_database(prepared, target, continue_from)
    if continue_from:
        logger.info("continuing the search from %d tuning records", records)
    key = compile_key(prepared, target, trials, max_trials_per_task, continue_from)
    cache = _cache_dir(key)
    if (cache / RESULT).is_file():
        built = BuiltCandidate.model_validate_json((cache / RESULT).read_text())
        if built.path and Path(built.path).is_file():
            logger.info("reusing the build %s (same model, target and budget): no tuning", cache)
            progress.report("tune", trials, trials, "cached build, no tuning")
            return built.model_copy(update={"cached": True})
    target_json = json.dumps(target_config(target), sort_keys=True)
    db_dir = tuning_dir(prepared, target)
    artifact_id = create_progress_artifact(0.0, description=f"TVM tuning, {trials} trials")

    def on_progress(done: int, total: int) -> None:
        progress.report("tune", done, total)
        if artifact_id and total:
            try:
                update_progress_artifact(artifact_id, 100.0 * done / total)
            except Exception:
                pass

    logger.info("tuning with %d trials for target %s; database %s", trials, target_json, db_dir)
    staging = cache.with_name(cache.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    start = time.perf_counter()
    try:
        result = compile_model(Path(prepared.path), checked.inputs, target_kind=target, trials=trials,
                               max_trials_per_task=max_trials_per_task, db_dir=db_dir,
                               out=staging / "model.so", progress=on_progress)
    except KilnError as exc:
        logger.warning("TVM candidate failed to build: %s", exc)
        return BuiltCandidate(name="tvm", backend="tvm", error=exc.message,
                              build_seconds=time.perf_counter() - start)
    built = BuiltCandidate(
        name="tvm", backend="tvm", path=str(cache / "model.so"), build_seconds=result.seconds,
        settings={"device": device_for(target)},
        tuning={"trials": trials, "tasks": result.tasks, "records_added": result.tuned_records,
                "seconds": round(result.seconds, 2), "database": str(db_dir), "target": result.target,
                "max_trials_per_task": max_trials_per_task})
    (staging / RESULT).write_text(built.model_dump_json(indent=2))
    shutil.rmtree(cache, ignore_errors=True)
    staging.rename(cache)
    logger.info("TVM build done in %.1f s: %d tasks, %d new tuning records", result.seconds, result.tasks,
                result.tuned_records)
    return built
