"""compile: the TVM candidate, built by tuning and cached by the content hash of its inputs.

The tuning database lives per (target, prepared model) under KILN_HOME/tuning, so a later run with the same
workloads continues from it; a finished build lives under KILN_HOME/cache/tvm/KEY and is never tuned again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from kiln.artifact.manifest import Int8Lowering, RunSettings, TaskTuning, TuningInfo, versions
from kiln.artifact.specs import TensorSpec
from kiln.artifact.target import Target
from kiln.compiler import (
    DB_FILES,
    MEASUREMENT,
    CompileResult,
    Limits,
    Progress,
    compile_model,
    device_for,
    first_round_need,
    passes,
    target_config,
)
from kiln.compiler.database import count_records
from kiln.compiler.rpc import RpcDevices
from kiln.compiler.source import fingerprint
from kiln.config import kiln_home, settings
from kiln.errors import DeviceError, KilnError
from kiln.fs import atomic_dir, file_sha256, json_sha256
from kiln.optimize import candidates
from kiln.optimize.buckets import Bucket, bucketed_dims, builds_affordable, choose_grid, split_trials
from kiln.optimize.inspect import describe_unsupported, load_model
from kiln.optimize.judging import not_judged
from kiln.optimize.models import BuiltCandidate, CheckedProgram, PreparedModel
from kiln.optimize.plan import Plan
from kiln.optimize.prepare import prepare_model
from kiln.runtime.buckets import as_key, at_values, bucket_file

RESULT = "result.json"
_log = logging.getLogger("kiln.optimize")


def tuning_dir(prepared: PreparedModel, target: Target | str) -> Path:
    """The MetaSchedule database of one (target, prepared model): every run on them adds to it. Records measured
    another way (an earlier MEASUREMENT) stay where they are, unused."""
    where = {**target_config(target), "measurement": MEASUREMENT}
    if not isinstance(target, str) and target.measured_on:  # a device's timings are its own records
        where["measured_on"] = target.measured_on
    return kiln_home() / "tuning" / json_sha256(json.dumps(where, sort_keys=True))[:12] / prepared.sha256[:24]


class CompileJob(BaseModel):
    """One compile-stage candidate, settled before it builds (`job`): the model it compiles, its budget and the
    tuning database it continues, and the build's cache key, computed once from them (compile_key) and used both
    by Prefect's task cache and by the build. `skipped`: why it is not built."""

    name: str
    model: str  # the ONNX model it lowers: the program's, or the onnxruntime int8 build it compiles
    prepared: PreparedModel | None = None  # that model at the program's shapes; None: built per shape bucket
    trials: int = 0
    tune_seconds: float | None = None
    int8: str | None = None  # the int8 dot intrinsic of a TVM int8 candidate on this CPU
    database: str | None = None  # the sha256 of the tuning database a continued search starts from
    key: str | None = None  # compile_key(plan, this job): the build's cache folder under KILN_HOME/cache/tvm
    folder: str | None = None  # that folder (KILN_HOME included)
    built: bool = False  # a finished build is in that folder
    skipped: str | None = None


def compile_key(plan: Plan, job: CompileJob) -> str:
    """Same model, target, budget and compiler code: the same build; a pure function of the plan and the
    candidate's job.
    Continuing a search also depends on what the database holds (`job.database`), so a second re-optimization
    tunes again instead of returning the first one's build."""
    v = versions()
    extra = candidates.get(job.name).graph_passes  # (absent for plain tvm: its earlier builds keep their keys)
    return json_sha256({"model": job.prepared.sha256 if job.prepared else None,
                        "target": plan.target.model_dump(include={"kind", "mcpu", "mattr"}
                                                         | ({"cores", "measured_on"} if plan.target.measured_on
                                                            else set())),
                        "trials": job.trials, "per_task": plan.request.max_trials_per_task,
                        "seconds": job.tune_seconds, "prepack": plan.prepack, "tvm": v["tvm"], "kiln": v["kiln"],
                        "compiler": fingerprint(),
                        "measurement": MEASUREMENT, "db": job.database, **({"passes": list(extra)} if extra else {}),
                        **({"int8": job.int8} if job.int8 else {})})[:24]


INT8_TIME_WEIGHT = 2.0  # an int8 candidate's expected gain over fp32 TVM's: its weight in the shared tuning time


def time_share(plan: Plan, name: str) -> float | None:
    """This compile candidate's part of the run's wall-clock budget (None: no time budget), on its target's part
    of it (a fleet's targets share --tune-time)."""
    seconds = plan.request.tune_time * plan.tune_fraction if plan.request.tune_time else None
    return share_of(seconds, plan.compiled, name)


def share_of(seconds: float | None, compiled: list[str], name: str) -> float | None:
    """The TVM candidates of one run share --tune-time instead of each taking all of it (the run would take it
    once per candidate), int8 ones weighted by their expected gain (INT8_TIME_WEIGHT)."""
    if not seconds or name not in compiled:
        return seconds
    weight = {n: INT8_TIME_WEIGHT if candidates.get(n).quantized_from else 1.0 for n in compiled}
    return seconds * weight[name] / sum(weight.values())


def int8_intrinsic(name: str, target: Target) -> str | None:
    """The int8 dot intrinsic a TVM int8 candidate is built around on the target's CPU (None: not an int8
    candidate). KilnError where none applies (a GPU target, an SSE-only CPU) or the one asked for is not available."""
    candidate = candidates.get(name)
    if not candidate.quantized_from:
        return None
    if target.kind != "llvm":
        raise KilnError(f"{name} builds CPU kernels (int8 dot instructions); the target is {target.name}")
    from kiln.compiler.int8.intrinsics import for_cpu

    key = for_cpu(target.int8_isa, settings().int8_intrinsic, saturating=candidate.int8_sums == "saturating")
    if key is None:
        raise KilnError(f"the target {target.name} ({target.int8_isa}) has no {candidate.int8_sums} int8 dot "
                        "instruction kiln's kernels use")
    return key


def int8_source(name: str, built: list[BuiltCandidate]) -> BuiltCandidate | None:
    """The onnxruntime int8 build a TVM int8 candidate compiles: its last accuracy-aware attempt (the first whose
    calibration check passed, or the one keeping the most nodes in fp32), so a node kept in fp32 stays fp32 in TVM
    too."""
    source = candidates.get(name).quantized_from
    rows = [b for b in built if b.name == source or b.name.startswith(f"{source}-fallback")]
    return rows[-1] if rows else None


def int8_model(checked: CheckedProgram, name: str, source: BuiltCandidate) -> PreparedModel:
    """The quantized model `source` built, at the program's input shapes (static: one build). Prepared once per
    source content: a re-run with the same int8 build prepares nothing."""
    path = checked.work_dir / "int8" / f"{name}.onnx"
    stamp, source_sha = path.with_suffix(".source"), file_sha256(Path(source.path))
    if not (path.is_file() and stamp.is_file() and stamp.read_text() == source_sha):
        prepare_model(load_model(Path(source.path)), checked.inputs, path, source.path)
        stamp.write_text(source_sha)
    return PreparedModel(path=str(path), sha256=file_sha256(path))


def shared_tuning_root() -> Path:
    """Where the per-CPU tuning databases every model adds to live (kiln.compiler.shared_db)."""
    return kiln_home() / "tuning" / "shared"


def tuning_databases() -> list[dict]:
    """Every tuning database under KILN_HOME: the shared one of each CPU fingerprint, then each model's."""
    from kiln.compiler.shared_db import describe

    root = kiln_home() / "tuning"
    shared = [{"kind": "shared", **describe(f)} for f in sorted(shared_tuning_root().glob("*/*")) if f.is_dir()]
    own = [{"kind": "model", **describe(f)} for f in sorted(root.glob("*/*"))
           if f.is_dir() and f.parent.name != "shared" and (f / DB_FILES[1]).is_file()]
    return shared + own


def seed_database(prepared: PreparedModel, target: Target | str, saved: str | None) -> int:
    """Start from an artifact's saved database (tuning/) when this machine has none; returns its records."""
    db_dir = tuning_dir(prepared, target)
    if saved and not (db_dir / DB_FILES[1]).is_file() and (Path(saved) / DB_FILES[1]).is_file():
        db_dir.mkdir(parents=True, exist_ok=True)
        for name in DB_FILES:
            shutil.copy2(Path(saved) / name, db_dir / name)
    records = db_dir / DB_FILES[1]
    return sum(1 for line in records.open() if line.strip()) if records.is_file() else 0


def cache_dir(key: str) -> Path:
    return kiln_home() / "cache" / "tvm" / key


def job(checked: CheckedProgram, prepared: PreparedModel, plan: Plan, name: str = "tvm",
        source: BuiltCandidate | None = None) -> CompileJob:
    """What compile-stage candidate `name` builds, settled: a TVM int8 candidate compiles `source`, the onnxruntime
    int8 build whose quantization it lowers (int8_source), prepared here at the program's shapes; or why it is
    skipped. The files it needs are written here (the int8 model, the seeded database), before Prefect's cache
    key is asked for, so that key only hashes."""
    if checked.unsupported_ops:
        return CompileJob(name=name, model=checked.model_path,
                          skipped=f"skipped: {describe_unsupported(checked.unsupported_ops)}")
    model = checked.model_path
    wanted = candidates.get(name).quantized_from
    if wanted:
        if source is None or not source.path:
            why = source.error if source is not None else "not built"
            return CompileJob(name=name, model=model, skipped=f"skipped: {wanted} gave no model to lower ({why})")
        try:
            int8_intrinsic(name, plan.target)
        except KilnError as exc:
            return CompileJob(name=name, model=model, skipped=f"skipped: {exc.message}")
        model = source.path
        if not checked.profile:
            prepared = int8_model(checked, name, source)
    if checked.profile:  # built per shape bucket: each bucket's job is settled when its model is cut
        return CompileJob(name=name, model=model)
    return static_job(prepared, plan, name, plan.request.trials, time_share(plan, name), model)


def static_job(prepared: PreparedModel, plan: Plan, name: str, trials: int, tune_seconds: float | None,
               model: str | None = None) -> CompileJob:
    """The job of one static-shape build of `prepared` within `trials` and `tune_seconds` (a shape bucket's
    share of the plan's budget, or all of it), its key computed once. The database is seeded first from the
    incumbent's (seed_database), since the key of a continued search depends on it."""
    target = plan.target
    if not plan.judging.here:  # its trials could not run here (SIGILL): compiled untuned
        trials, tune_seconds = 0, None
    seed_database(prepared, target, plan.tuning_from)
    db = tuning_dir(prepared, target) / DB_FILES[1]
    settled = CompileJob(name=name, model=model or prepared.path, prepared=prepared, trials=trials,
                         tune_seconds=tune_seconds, int8=int8_intrinsic(name, target),
                         database=file_sha256(db) if plan.tuning_from and db.is_file() else None)
    key = compile_key(plan, settled)
    folder = cache_dir(key).resolve()
    return settled.model_copy(update={"key": key, "folder": str(folder), "built": (folder / RESULT).is_file()})


def trial_devices(plan: Plan) -> RpcDevices | None:
    """The devices that time the trials (--device), as the compiler's runner takes them."""
    d = plan.device
    return RpcDevices(host=d.host, port=d.port, key=d.key, wait_s=d.timeout, devices=d.devices,
                      measured_on=d.fingerprint) if d else None


def tuning_info(result: CompileResult, limits: Limits, db_dir: Path, records: int, target: Target) -> TuningInfo:
    t = result.tuning
    return TuningInfo(
        trials=limits.trials, tasks=len(t.tasks), records_added=records, seconds=round(result.seconds, 2),
        database=str(db_dir), target=result.target, max_trials_per_task=limits.max_trials_per_task,
        time_budget_s=limits.seconds, trials_run=t.trials, failed_trials=t.failed, stopped_by=t.stopped_by,
        estimated_ms=round(t.estimated_ms, 4) if t.estimated_ms is not None else None, warnings=t.warnings(),
        seeded_records=t.seeded, shared_records_added=t.shared_added, cost_model=t.cost_model,
        first_round=t.first_round, int8=_int8_lowering(result, limits, target),
        measured_on=limits.rpc.where if limits.rpc else None, device_failed_trials=t.device_failed,
        pipeline=[*result.passes, *(["weight-prepack"] if limits.prepack and result.target["kind"] == "llvm" else [])],
        per_task=[TaskTuning(name=k.name, weight=k.weight, flop=k.flop, trials=k.trials, failed_trials=k.failed,
                             build_failures=k.build_failures, run_failures=k.run_failures,
                             best_us=round(k.best_us, 3) if k.best_us is not None else None,
                             first_error=k.first_error,
                             start_us=round(k.start_us, 3) if k.start_us is not None else None, int8=k.int8)
                  for k in t.tasks])


def _int8_lowering(result: CompileResult, limits: Limits, target: Target) -> Int8Lowering | None:
    if result.int8 is None:
        return None
    from kiln.compiler.int8.intrinsics import get
    from kiln.cpu import clock_ghz

    intrin, ghz = get(limits.int8), clock_ghz()
    return Int8Lowering(intrinsic=limits.int8, isa=target.int8_isa, exact=intrin.exact,
                        lowered=result.int8.rewritten, not_lowered=result.int8.skipped,
                        peak_gops=intrin.peak_gops(result.target["num-cores"], ghz, result.target.get("mcpu", "")))


def compile_tvm(checked: CheckedProgram, job: CompileJob, plan: Plan,
                log: logging.Logger | logging.LoggerAdapter = _log,
                on_progress: Callable[[Progress], None] | None = None) -> BuiltCandidate:
    """Tune and build a compile-stage candidate (its `job`: tvm, tvm-fast-math, a TVM int8 one) within the plan's
    budget (trials, and a wall-clock tune_time beside them: whichever is spent first ends the search), continuing
    from the incumbent's saved database where this machine has none; or return the cached build of the same
    inputs. A build that fails is returned with its reason (the run goes on with the other candidates)."""
    if job.skipped:
        return BuiltCandidate(name=job.name, backend="tvm", error=job.skipped)
    if checked.profile:  # static builds, one per shape bucket, behind a padding dispatcher
        built = compile_buckets(checked, plan, job.name, log, on_progress, Path(job.model))
    else:
        built = compile_static(checked.inputs, job, plan, log, on_progress)
    if built.error or plan.judging.here:
        return built
    if plan.device:  # its code runs on the device only: accuracy and speed both measured there
        return built.model_copy(update={"judge_on_device": True})
    why = not_judged(plan.target, plan.judging)
    if why:  # kept in the build cache; never timed or gated here, so it cannot ship untested
        log.warning("%s: %s", job.name, why)
        return built.model_copy(update={"error": f"{why}; the build is kept at {built.path}"})
    return built.model_copy(update={"emulator": plan.judging.emulator, "not_timed": plan.judging.speed_not_measured()})


def compile_static(inputs: list[TensorSpec], job: CompileJob, plan: Plan,
                   log: logging.Logger | logging.LoggerAdapter = _log,
                   on_progress: Callable[[Progress], None] | None = None) -> BuiltCandidate:
    """One static-shape build of `job.prepared` (inputs of these shapes) within the job's budget, or its cached
    build."""
    r = plan.request
    target, name, prepared, trials, tune_seconds = plan.target, job.name, job.prepared, job.trials, job.tune_seconds
    cache = cache_dir(job.key)
    if plan.tuning_from:
        log.info("continuing the search from %d tuning records", count_records(tuning_dir(prepared, target)))
    if (cache / RESULT).is_file():
        built = BuiltCandidate.model_validate_json((cache / RESULT).read_text())
        if built.path and Path(built.path).is_file():
            log.info("reusing the build %s (same model, target and budget): no tuning", cache)
            return built.model_copy(update={"cached": True})
    db_dir = tuning_dir(prepared, target)
    s = settings()
    limits = Limits(trials=trials, seconds=tune_seconds, max_trials_per_task=r.max_trials_per_task,
                    builder_timeout_s=s.tune_builder_timeout_s, runner_timeout_s=s.tune_runner_timeout_s,
                    prepack=plan.prepack, int8=job.int8, rpc=trial_devices(plan))
    log.info("tuning with %d trials%s for target %s; database %s", trials,
             f" or {tune_seconds:g} s" if tune_seconds else "", json.dumps(target_config(target), sort_keys=True),
             db_dir)
    start = time.perf_counter()
    before = count_records(db_dir)
    try:
        with atomic_dir(cache, existing="replace") as staged:
            result = compile_model(Path(prepared.path), inputs, target=target, limits=limits,
                                   db_dir=db_dir, out=staged.path / "model.so", progress=on_progress,
                                   shared_root=shared_tuning_root(),
                                   graph_passes=(*passes.DEFAULT, *candidates.get(name).graph_passes), log=log)
            info = tuning_info(result, limits, db_dir, count_records(db_dir) - before, target)
            if result.int8 is not None:
                log.info("%s: %d quantized matmul(s) lowered to int8 kernels (%s)%s", name,
                         len(result.int8.rewritten), limits.int8, "; not lowered: " + "; ".join(result.int8.skipped)
                         if result.int8.skipped else "")
            built = BuiltCandidate(name=name, backend="tvm", path=str(cache / "model.so"),
                                   build_seconds=result.seconds, settings=RunSettings(device=device_for(target.kind)),
                                   tuning=info)
            (staged.path / RESULT).write_text(built.model_dump_json(indent=2))
    except passes.NotApplicable as exc:
        log.info("%s skipped: %s", name, exc.message)
        return BuiltCandidate(name=name, backend="tvm", error=f"skipped: {exc.message}")
    except DeviceError:
        raise  # no device left to measure on: the run cannot go on
    except KilnError as exc:
        log.warning("%s candidate failed to build: %s", name, exc)
        return BuiltCandidate(name=name, backend="tvm", error=exc.message,
                              build_seconds=time.perf_counter() - start)
    for warning in info.warnings:
        if warning != result.tuning.budget_warning:  # said before tuning started
            log.warning("TVM tuning: %s", warning)
    log.info("TVM build done in %.1f s: %s (stopped by %s); %d new tuning records; %d records from this CPU's "
             "shared database, %d added to it", result.seconds, result.tuning.describe(), info.stopped_by,
             info.records_added, info.seeded_records, info.shared_records_added)
    return built


def compile_buckets(checked: CheckedProgram, plan: Plan, name: str = "tvm",
                    log: logging.Logger | logging.LoggerAdapter = _log,
                    on_progress: Callable[[Progress], None] | None = None,
                    model_path: Path | None = None) -> BuiltCandidate:
    """A static build per shape bucket (kiln.optimize.buckets), each tuned with its traffic share of the budget,
    largest share first; one candidate whose runner pads each request up to its bucket (kiln.runtime.buckets)."""
    dims, why = bucketed_dims(checked.profile)
    if not dims:
        return BuiltCandidate(name=name, backend="tvm", error=f"skipped: {why}")
    label = " x ".join(d.name for d in dims)
    values = [checked.dim_values.get(d.name, []) for d in dims]
    points = list(zip(*values, strict=False))
    chosen = choose_grid(dims, points)
    model = load_model(model_path or Path(checked.model_path))

    def bucket_model(bucket: Bucket) -> Path:
        return checked.work_dir / "buckets" / name / ("_".join(f"{d.name}-{v}" for d, v in
                                                             zip(dims, bucket.values, strict=True)) + ".onnx")

    seconds = time_share(plan, name) if plan.request.tune_time else None
    fewer = None  # why fewer buckets were built than the data suggested
    if seconds and len(chosen) > 1:
        chosen, fewer = _within_time(checked, plan, name, dims, points, chosen, seconds, model, bucket_model)
        if fewer:
            log.warning("%s: %s", name, fewer)
    budget = split_trials(plan.request.trials, chosen)
    log.info("TVM buckets of %s: %s", label, ", ".join(f"{b.describe()} ({b.share:.0%} of the samples, "
                                                       f"{budget[b.key]} trials)" for b in chosen))
    parts: dict[tuple[int, ...], BuiltCandidate] = {}
    for bucket in sorted(chosen, key=lambda b: -b.share):
        specs = at_values(checked.inputs, dims, bucket.key)
        where = f"bucket {label} = {bucket.describe()}"
        path = bucket_model(bucket)
        try:
            prepare_model(model, specs, path, checked.model_path)
        except KilnError as exc:
            return BuiltCandidate(name=name, backend="tvm", error=f"{where}: {exc.message}")
        prepared = PreparedModel(path=str(path), sha256=file_sha256(path))
        seconds = time_share(plan, name) * bucket.share if plan.request.tune_time else None
        part = compile_static(specs, static_job(prepared, plan, name, budget[bucket.key], seconds), plan, log,
                              on_progress)
        if part.error:
            return part.model_copy(update={"error": f"{where}: {part.error}"})
        parts[bucket.key] = part
    key = json_sha256({bucket_file(b): p.path for b, p in sorted(parts.items())})[:24]
    folder = cache_dir(f"buckets-{key}")
    if not (folder / RESULT).is_file():
        with atomic_dir(folder, existing="replace") as staged:
            for bucket_key, part in parts.items():
                shutil.copy2(part.path, staged.path / bucket_file(bucket_key))
            (staged.path / RESULT).write_text(json.dumps({bucket_file(b): p.path for b, p in parts.items()}))
    top = max(chosen, key=lambda b: b.share).key
    first = parts[top]
    grid = {"buckets": sorted(b[0] for b in parts), "bucket_dim": dims[0].name} if len(dims) == 1 else \
        {"buckets": [list(b) for b in sorted(parts, key=lambda b: (int(np.prod(b)), b))],
         "bucket_dims": [d.name for d in dims]}
    tuning = bucket_tuning(label, {b: p.tuning for b, p in parts.items() if p.tuning}, top)
    if tuning is not None and fewer:
        tuning = tuning.model_copy(update={"warnings": [fewer, *tuning.warnings]})
    return BuiltCandidate(
        name=name, backend="tvm", path=str(folder), cached=all(p.cached for p in parts.values()),
        build_seconds=sum(p.build_seconds or 0 for p in parts.values()), tuning=tuning,
        settings=first.settings.merged(**grid, padding=checked.padding or None))


def _within_time(checked: CheckedProgram, plan: Plan, name: str, dims: list, points: list, chosen: list[Bucket],
                 seconds: float, model, bucket_model: Callable[[Bucket], Path]) -> tuple[list[Bucket], str | None]:
    """(`chosen`, None), or fewer buckets where `seconds` cannot give each build's tasks a first round (the
    largest bucket's tasks and this CPU's trial costs say how long one takes), with why; the upper end is always
    among them."""
    corner = max(chosen, key=lambda b: (int(np.prod(b.values)), b.values))
    specs = at_values(checked.inputs, dims, corner.key)
    try:
        prepare_model(model, specs, bucket_model(corner), checked.model_path)
        tasks, need = first_round_need(
            bucket_model(corner), specs, target=plan.target, shared_root=shared_tuning_root(),
            limits=Limits(trials=1, prepack=plan.prepack, int8=int8_intrinsic(name, plan.target)),
            graph_passes=(*passes.DEFAULT, *candidates.get(name).graph_passes))
    except (KilnError, passes.NotApplicable):
        return chosen, None  # the build itself says why
    most = builds_affordable(seconds, need)
    if most >= len(chosen):
        return chosen, None
    fewer = choose_grid(dims, points, most=most)
    return fewer, (f"{seconds:.0f} s of tuning cannot give {len(chosen)} bucket builds of {tasks} tasks each a "
                   f"first round (about {need:.0f} s each on this CPU): {len(fewer)} built "
                   f"({', '.join(b.describe() for b in fewer)}), requests padded up to them")


def bucket_tuning(dim: str, tunings: dict[int, TuningInfo] | dict[tuple[int, ...], TuningInfo],
                  top: int | tuple[int, ...]) -> TuningInfo | None:
    """Every bucket's search as one record: budgets, trials, failures, records and seconds summed, each task row
    labelled with its bucket; the database, target and int8 lowering are the largest bucket's (publish copies that
    database: the re-optimization of the traffic that matters most continues from it)."""
    if top not in tunings:
        return None
    if len(tunings) == 1:
        return tunings[top]
    parts = sorted(tunings.items())

    def total(field: str) -> float:
        return sum(getattr(t, field) or 0 for _, t in parts)

    return tunings[top].model_copy(update={
        "trials": int(total("trials")), "tasks": int(total("tasks")), "records_added": int(total("records_added")),
        "seconds": total("seconds"), "trials_run": int(total("trials_run")),
        "failed_trials": int(total("failed_trials")),
        "time_budget_s": total("time_budget_s") or None, "seeded_records": int(total("seeded_records")),
        "shared_records_added": int(total("shared_records_added")),
        "estimated_ms": None,  # each bucket's is one padded request's, not the traffic's
        "stopped_by": ", ".join(sorted({t.stopped_by for _, t in parts if t.stopped_by})) or None,
        "per_task": [task.model_copy(update={"name": f"{dim} = {'x'.join(map(str, as_key(value)))}: {task.name}"})
                     for value, t in parts for task in t.per_task],
        "warnings": list(dict.fromkeys(w for _, t in parts for w in t.warnings)),
    })
