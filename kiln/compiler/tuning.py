"""MetaSchedule tuning as kiln runs it: trials where the latency is, a budget in trials and in time, and every
failed trial counted.

relax's `static_shape_tuning` pipeline splits the budget evenly (`max_trials_per_task`), which at kiln's
budgets gave each task less than one evolutionary round (64 samples), so the cost model never trained; and it
said nothing when builds timed out (21 of 44 trials on a real transformer: LocalBuilder's 30 s on a loaded
2-core machine). Here the gradient task scheduler gives every task one full round (a task that starts from
tuned records, its own or the CPU's shared ones, only a short one) and then spends trials where they cut the
estimated end-to-end latency most; builder and runner timeouts are settings; a measure
callback counts valid and failed trials per task and reports progress; a wrapper around the evolutionary
search stops handing out trials once the wall-clock budget is spent (the scheduler then winds down the
trials already in flight, as it does when a task's search space is exhausted). With a wall-clock budget the
first round is sized from the time and this CPU's measured cost of a trial (kiln.compiler.trial_costs), tasks
largest first, so every task is measured early; kiln's int8 kernels are searched in their own space
(kiln.compiler.int8.space), its fused dynamic quantization has one schedule (kiln.compiler.int8.dynamic_quantize).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.compiler import rpc, shared_db, trial_costs
from kiln.compiler.builder import pooled_builder
from kiln.compiler.int8 import dynamic_quantize
from kiln.compiler.int8.space import is_int8_task
from kiln.compiler.int8.space import space_generator as int8_space
from kiln.compiler.rpc import NO_DEVICE_LEFT, RpcDevices

TRIALS_PER_ROUND = 64  # MetaSchedule's evolutionary round; the cost model trains on whole rounds
# a task that starts from tuned records (this model's earlier search, or another model's on this CPU) needs no
# full first round to be measured: this many trials re-measure its best and try a few neighbours
KNOWN_TASK_ROUND = 8


def cost_model_kind() -> str:
    """MetaSchedule's XGBoost cost model where xgboost is installed (kiln pins xgboost-cpu), else its random
    model: the search still runs, guided by measurements alone, instead of failing on the import (a GPU host
    that carries TVM without xgboost and scipy)."""
    try:
        import xgboost  # noqa: F401  (MetaSchedule imports it when it builds the model)
    except ImportError:  # also an xgboost without scipy
        return "random"
    return "xgb"


@dataclass
class Limits:
    """How much tuning, and how long a single trial may take."""

    trials: int
    seconds: float | None = None  # wall clock: no new trial starts once spent
    max_trials_per_task: int | None = None  # None: no cap, the scheduler decides
    builder_timeout_s: float = 120.0
    runner_timeout_s: float = 60.0
    trials_per_round: int = TRIALS_PER_ROUND
    prepack: bool = False  # pre-packed weights (kiln.compiler.pipelines.prepacking)
    threads: int | None = None  # threads each trial runs with, as the model will; None: the target's cores
    # each trial timed with the caches flushed (its weights read from memory, as in a model larger than the cache)
    # instead of warm from the run before; Ansor's CPU recipe. Off until measured better on and off.
    cache_flush: bool = False
    int8: str | None = None  # kiln's int8 dense tasks are searched around this dot intrinsic (kiln.compiler.int8)
    rpc: RpcDevices | None = None  # trials timed on these devices (kiln.compiler.rpc); None: here


POPULATION = 512  # MetaSchedule's default population of schedules sampled and evolved per search round
MIN_POPULATION = 64


def population_for(trials: int, tasks: int) -> int:
    """The search's population for a budget of `trials` over `tasks`: MetaSchedule's 512 once a task gets a full
    round (64 trials) or more; smaller for tiny budgets, where sampling and evolving 512 schedules per round (seconds
    on 2 cores, whatever the round measures) buys nothing: 8 per trial a task gets, at least 64."""
    per_task = trials // max(1, tasks)
    return POPULATION if per_task >= TRIALS_PER_ROUND else max(MIN_POPULATION, min(POPULATION, 8 * per_task))


def evolutionary(limits: Limits, tasks: int):
    from tvm.s_tir import meta_schedule as ms

    population = population_for(limits.trials, tasks)
    return ms.search_strategy.EvolutionarySearch(population_size=population,
                                                 init_min_unmeasured=min(50, population // 2))


@dataclass
class TaskState:
    name: str
    weight: float
    flop: float = 0.0
    trials: int = 0
    build_failures: int = 0
    run_failures: int = 0
    best_us: float | None = None
    first_error: str | None = None
    start_us: float | None = None  # best known before this search: the model's own or the shared records
    int8: bool = False  # one of kiln's int8 dense kernels (kiln.compiler.int8)

    @property
    def failed(self) -> int:
        return self.build_failures + self.run_failures

    @property
    def valid(self) -> int:
        return self.trials - self.failed


@dataclass
class Progress:
    """What the tuner knows so far; `estimated_ms` only once every task has a valid measurement."""

    tasks: list[TaskState]
    limits: Limits
    started: float = field(default_factory=time.monotonic)
    stopped_by: str | None = None  # "trials", "time", "search space" once finished
    seeded: int = 0  # records copied from the CPU's shared database before tuning
    first_round: int | None = None  # trials per task in the first round (sized from a time budget)
    budget_warning: str | None = None  # said before tuning: the time cannot give every task a first round
    shared_added: int = 0  # records this run added to it
    cost_model: str | None = None  # what guided the search: "xgb" or "random"
    device_failed: int = 0  # trials whose device session broke (a device lost mid-trial, or none free in time)
    devices_lost: str | None = None  # why the search stopped early: no device left under the key

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.tasks)

    @property
    def measured_tasks(self) -> int:
        return sum(t.best_us is not None for t in self.tasks)

    @property
    def estimated_ms(self) -> float | None:
        if not self.tasks or self.measured_tasks < len(self.tasks):
            return None
        return sum(t.weight * t.best_us for t in self.tasks) / 1000.0

    def describe(self) -> str:
        est = self.estimated_ms
        return (f"{self.trials} trials ({self.failed} failed), {self.measured_tasks}/{len(self.tasks)} tasks measured"
                + (f", estimated {est:.3g} ms" if est is not None else ""))

    def warnings(self) -> list[str]:
        """What a user must hear: tasks left without a measurement, and a run where most trials failed."""
        out = [self.budget_warning] if self.budget_warning else []
        unmeasured = [t for t in self.tasks if t.best_us is None and t.trials]
        if unmeasured:
            out.append(f"{len(unmeasured)} task(s) got no valid measurement and keep TVM's default schedule: "
                       + "; ".join(f"{t.name} ({t.failed}/{t.trials} failed: {t.first_error or '?'})"
                                   for t in unmeasured[:5]))
        if self.cost_model == "random":
            out.append("xgboost is not installed, so a random cost model guided the search (measurements alone): "
                       "install xgboost-cpu for MetaSchedule's learned model")
        untried = [t.name for t in self.tasks if not t.trials]
        if untried and self.stopped_by == "time":
            out.append(f"the tuning time ran out before {len(untried)} of {len(self.tasks)} task(s) got a trial; "
                       "they keep TVM's default schedule: give it more time")
        elif untried and self.limits.trials > 0:
            out.append(f"{len(untried)} of {len(self.tasks)} task(s) got no trial ({', '.join(untried[:5])}): a "
                       f"budget of {self.limits.trials} trials is less than one per task")
        if self.device_failed:
            out.append(f"{self.device_failed} trial(s) failed on the device side (a device lost mid-trial or none "
                       "free in time); they were counted as failed and the search went on with the others"
                       + (f"; it stopped: {self.devices_lost}" if self.devices_lost else ""))
        if self.trials and self.failed * 2 > self.trials:
            builds = sum(t.build_failures for t in self.tasks)
            why = (f"{builds} builds failed (builder timeout {self.limits.builder_timeout_s:g} s; raise "
                   "KILN_TUNE_BUILDER_TIMEOUT_S on a loaded machine)" if builds * 2 >= self.failed else
                   f"{self.failed - builds} runs failed (runner timeout {self.limits.runner_timeout_s:g} s)")
            out.append(f"most trials failed: {self.failed} of {self.trials}; {why}")
        return out


def _error_line(msg: str | None) -> str:
    lines = [ln.strip() for ln in str(msg or "").splitlines() if ln.strip()]
    return next((ln for ln in lines if "Timeout" in ln or "Error" in ln), lines[-1] if lines else "?")[:160]


def _seconds(result) -> float | None:
    if result is None or result.error_msg is not None or not result.run_secs:
        return None
    runs = sorted(float(getattr(s, "value", s)) for s in result.run_secs)
    return runs[len(runs) // 2]


def _nameless_log_handlers_dropped() -> None:
    """MetaSchedule lists its logger's handlers by name in a logging dictConfig; a nameless one (pytest's log
    capture leaves one there between tests) makes that config fail with "'NoneType' object has no attribute
    'format'"."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in [h for h in logger.handlers if h.get_name() is None]:
        logger.removeHandler(handler)


def runner_threads(threads: int) -> None:
    """In the runner's worker, before its first kernel: run trials with `threads` threads.

    TVM's thread pool, unless TVM_NUM_THREADS says otherwise, takes half the cores on x86 (it assumes
    hyper-threads): 1 of these machines' 2. Every trial was measured on one thread while kiln runs the model
    on all of them, so the tuner chose schedules for the wrong machine and its estimate was ~2x the latency."""
    import os

    os.environ["TVM_NUM_THREADS"] = str(threads)


def trial_runner(limits: Limits, cores: int):
    """Where trials are timed: here in a worker process (LocalRunner), or on the devices of `limits.rpc`."""
    from tvm.s_tir import meta_schedule as ms

    if limits.rpc:  # the device fills the arguments as measure_arguments does (kiln.device.functions.random_fill)
        return rpc.runner(limits.rpc, evaluator(limits.cache_flush), limits.runner_timeout_s)
    return ms.runner.LocalRunner(timeout_sec=limits.runner_timeout_s, f_alloc_argument=measure_arguments,
                                 evaluator_config=evaluator(limits.cache_flush),
                                 initializer=functools.partial(runner_threads, limits.threads or cores))


def evaluator(cache_flush: bool):
    """MetaSchedule's defaults (3 warm runs per repeat, at least 100 ms), or one cold run per repeat: a flush
    happens before each repeat only, so it needs number=1 (as Ansor's runner sets it)."""
    from tvm.s_tir import meta_schedule as ms

    if not cache_flush:
        return ms.runner.EvaluatorConfig()
    return ms.runner.EvaluatorConfig(number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True)


def measure_arguments(device, args_info, alloc_repeat: int) -> list[list]:
    """The runner's inputs for a trial: floats uniform in [-0.5, 0.5], integer tensors all zeros.

    TVM's default fill draws floats from [1, 10]. A matmul over such inputs gives outputs in the thousands,
    where erf, exp and tanh take their saturated shortcut: MiniLM's GELU kernel was estimated at a fraction of
    what it costs in place (activations of order 1 take libm's slow path). Small symmetric values keep the
    kernels on the path real activations take. An integer argument is an index somewhere (an embedding's token
    ids); TVM's random fill puts it out of range, and a gather reading out of range crashes the runner
    ("Subprocess terminated"). Zero is always in range."""
    import numpy as np
    import tvm

    fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")
    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for kind, dtype, shape in args_info:
            if kind != "TENSOR":
                raise NotImplementedError(kind)
            arg = tvm.runtime.empty(shape=shape, dtype=dtype, device=device)
            if dtype.startswith(("int", "uint", "bool")):
                arg.copyfrom(np.zeros(shape, dtype=dtype))
            elif dtype in ("float16", "float32", "float64"):
                arg.copyfrom(rng.uniform(-0.5, 0.5, size=shape).astype(dtype))
            else:  # bfloat16, fp8: numpy has no such dtype
                fill(arg)
            args.append(arg)
        repeated.append(args)
    return repeated


def _flop(mod) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # an estimate, for the report only
        return 0.0


@dataclass
class Plan:
    """A search set up and not yet run: its tasks (largest expected share of the latency first), their state,
    and what a time budget affords each in the first round."""

    extracted: list
    progress: Progress
    work_dir: Path
    shared: Path | None


def plan(mod, target, work_dir: Path, limits: Limits, shared: Path | None = None) -> Plan:
    """Extract the tasks of `mod` (a lowered Relax module), seed the model's database from the `shared` one,
    and size the first round. Tasks are ordered by weight x FLOP: MetaSchedule's first round goes in task
    order, so where the time runs out the tasks that matter most were measured."""
    from tvm.s_tir import meta_schedule as ms

    from kiln.compiler.int8.intrinsics import register_all
    from kiln.compiler.tvm_imports import tensor_intrinsics

    tensor_intrinsics()  # what every tuning context imports, without its 20 s of inspect.stack()
    register_all()  # the databases read below may hold int8 kernels' records, which name kiln's intrinsics
    extracted = ms.relax_integration.extract_tasks(mod, target)
    states = [TaskState(name=t.task_name, weight=float(t.weight), flop=_flop(t.mod),
                        int8=bool(limits.int8) and is_int8_task(t.dispatched[0])) for t in extracted]
    order = sorted(range(len(extracted)), key=lambda i: -states[i].weight * states[i].flop)
    extracted, states = [extracted[i] for i in order], [states[i] for i in order]
    progress = Progress(tasks=states, limits=limits)
    workloads = [t.mod for t in extracted]
    if shared is not None:
        progress.seeded = shared_db.seed(work_dir, shared, workloads)
    extracted, bests = shared_db.as_stored(work_dir, extracted)  # after seeding: its records count
    for task, best in zip(progress.tasks, bests, strict=True):
        if best is not None:
            task.start_us = task.best_us = best * 1e6
    costs = trial_costs.load(shared or work_dir)
    if limits.seconds and limits.trials > 0 and extracted:
        progress.first_round, progress.budget_warning = trial_costs.first_round(
            limits.seconds, len(extracted), costs, limits.trials_per_round)
    return Plan(extracted, progress, work_dir, shared)


def tune(mod, target, work_dir: Path, limits: Limits, on_progress: Callable[[Progress], None] | None = None,
         shared: Path | None = None) -> Progress:
    """Tune every task of `mod` (a lowered Relax module) into the JSON database in `work_dir`, starting from
    the `shared` database's records for workloads it has none of, and adding its best records there after."""
    return run(plan(mod, target, work_dir, limits, shared), on_progress)


def run(planned: Plan, on_progress: Callable[[Progress], None] | None = None) -> Progress:
    """Run a planned search; the costs it measured per trial and per round are kept for the next plan."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    extracted, progress, work_dir, shared = planned.extracted, planned.progress, planned.work_dir, planned.shared
    limits = progress.limits
    workloads = [t.mod for t in extracted]
    if not extracted or limits.trials <= 0:
        progress.stopped_by = "trials"
        return progress
    deadline = progress.started + limits.seconds if limits.seconds else None
    handed = [0]  # trials handed to the builder so far
    known = {t.name: t.start_us is not None for t in progress.tasks}
    spent = {"search_s": 0.0, "rounds": 0, "measure_s": 0.0, "measured": 0, "handed_at": 0.0}

    @derived_object
    class Deadline(PySearchStrategy):
        """The evolutionary search, handing out no trial beyond the budget, and none once the time is spent."""

        def __init__(self, inner=None):
            self.inner = inner or evolutionary(limits, len(extracted))
            self.known = False  # the task starts from tuned records
            self.rounds = 0

        def _initialize_with_tune_context(self, context) -> None:
            self.inner._initialize_with_tune_context(context)
            self.known = known.get(str(context.task_name), False)

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            if progress.devices_lost:
                return None
            if deadline is not None and time.monotonic() >= deadline:
                progress.stopped_by = "time"
                return None
            left = limits.trials - handed[0]  # the scheduler itself may overshoot by most of a round
            began = time.monotonic()
            candidates = self.inner.generate_measure_candidates() if left > 0 else None
            if candidates is None:
                return None
            first = left
            if self.rounds == 0:  # a task with tuned records, or a time budget's first round: fewer trials
                first = min(left, KNOWN_TASK_ROUND if self.known else left, progress.first_round or left)
            candidates = list(candidates)[:first]
            self.rounds += 1
            handed[0] += len(candidates)
            spent["handed_at"] = time.monotonic()
            spent["search_s"] += spent["handed_at"] - began
            spent["rounds"] += 1
            return candidates

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return Deadline(self.inner.clone())

    @derived_object
    class Watch(PyMeasureCallback):
        """Counts each task's valid and failed trials and keeps its best latency."""

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            task = progress.tasks[task_id]
            spent["measure_s"] += time.monotonic() - spent["handed_at"]
            spent["measured"] += len(runner_results)
            for built, ran in zip(builder_results, runner_results, strict=False):
                task.trials += 1
                if built.error_msg is not None:
                    task.build_failures += 1
                    task.first_error = task.first_error or _error_line(built.error_msg)
                    continue
                secs = _seconds(ran)
                if secs is None:
                    task.run_failures += 1
                    task.first_error = task.first_error or _error_line(ran.error_msg)
                    if limits.rpc and "RPCRunner: An exception" in (ran.error_msg or ""):
                        progress.device_failed += 1
                        if NO_DEVICE_LEFT in ran.error_msg:
                            progress.devices_lost = _error_line(ran.error_msg[ran.error_msg.index(NO_DEVICE_LEFT):])
                            progress.stopped_by = "devices lost"
                elif task.best_us is None or secs * 1e6 < task.best_us:
                    task.best_us = secs * 1e6
            if on_progress:
                on_progress(progress)

    _nameless_log_handlers_dropped()
    contexts, weights = [], []
    for task, state in zip(extracted, progress.tasks, strict=True):  # kiln's int8 kernels: their own space
        space = (int8_space(limits.int8) if state.int8 else dynamic_quantize.space_generator()
                 if dynamic_quantize.is_task(task.dispatched[0]) else "post-order-apply")
        made, weight = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=[task], work_dir=str(work_dir), space=space, strategy=Deadline())
        contexts += made
        weights += weight
    cores = contexts[0].num_threads
    # every task is measured before any gets more: a budget too small for a full round each is shared out
    per_round = max(1, min(limits.trials_per_round, limits.trials // len(extracted)))
    progress.cost_model = cost_model_kind()
    # builds run here on every core, whatever the target's (a device's) cores are
    builder = pooled_builder(max_workers=os.cpu_count() or 1, timeout_sec=limits.builder_timeout_s)
    try:
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=limits.trials,
            max_trials_per_task=limits.max_trials_per_task or limits.trials, num_trials_per_iter=per_round,
            builder=builder, cost_model=progress.cost_model,
            runner=trial_runner(limits, cores),
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), Watch()],
            task_scheduler="gradient")
    finally:
        builder.close()
    progress.stopped_by = progress.stopped_by or ("trials" if progress.trials >= limits.trials else "search space")
    if spent["measured"] and spent["rounds"]:
        trial_costs.save(shared or work_dir, trial_s=spent["measure_s"] / spent["measured"],
                         round_s=spent["search_s"] / spent["rounds"])
    if shared is not None:
        progress.shared_added = shared_db.merge(work_dir, shared, workloads)
    return progress
