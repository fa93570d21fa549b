"""The served model, whatever the protocol: a pool of runtime instances, the program's mapping code, and the
one timed path every inference takes (gRPC v2, REST v2 and the program's own service), which feeds the
statistics and metrics.

Triton's python backend lifecycle: initialize (ModelService loads N instances and the mapping code, warm_up),
execute (Inference.infer), finalize (the server drains calls, then shuts the executor down).
"""

from __future__ import annotations

import asyncio
import os
import queue
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from kiln.artifact.layout import PROGRAM_DIR
from kiln.artifact.manifest import Manifest
from kiln.errors import InputError
from kiln.program.user_code import load_user_program
from kiln.runtime.cpu_flags import for_this_cpu
from kiln.runtime.predictor import Predictor, checked_files, open_predictor
from kiln.serving.batching import Batcher, BatchingConfig
from kiln.serving.model_config import batch_dim
from kiln.serving.statistics import Metrics, ModelStats, Timing

T = TypeVar("T")


class Refused(Exception):
    """A request the server answers with an error: each protocol maps `kind` to its own status."""

    def __init__(self, kind: Literal["invalid", "not_found", "unavailable", "unsupported", "internal"],
                 message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


class ModelService:
    """The loaded artifact: a pool of predictors (one runtime instance each) and the mapping code."""

    def __init__(self, folder: Path, manifest: Manifest, workers: int = 1, threads: int | None = None,
                 spin: bool | None = None):
        """`manifest`: the server's, read once per process; every file is checked against it here, once."""
        self.folder = folder
        manifest = for_this_cpu(manifest, str(folder))  # a fleet's build for this CPU, or refused by name
        if threads is None:  # the winner's own thread count, shared out between the instances
            share = max(1, (os.cpu_count() or 1) // workers)
            threads = min(manifest.settings.threads or share, share)
        if spin is None:  # spinning intra-op threads help long multi-threaded runs and starve gRPC on short ones
            sel = next((c for c in manifest.candidates if c.name == manifest.selected), None)
            spin = bool(sel and sel.latency_ms and sel.latency_ms.p50 >= 1.0 and threads > 1)
        self.manifest = checked_files(folder, manifest)
        self.instances = workers
        self.pool: queue.Queue[Predictor] = queue.Queue()
        predictors = [open_predictor(folder, manifest, threads=threads, spin=spin) for _ in range(workers)]
        self.checker = predictors[0]  # Predictor.check reads only the manifest: safe from any thread
        for predictor in predictors:
            self.pool.put(predictor)
        self.program = None
        if self.manifest.protocol and self.manifest.protocol.service:
            self.program = load_user_program(folder / PROGRAM_DIR / self.manifest.program.file)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_timed(feed, time.perf_counter_ns())[0]

    def run_timed(self, feed: dict[str, np.ndarray], since: int) -> tuple[dict[str, np.ndarray], int, int]:
        """The outputs, the ns waited for a free instance since `since`, and the ns the model ran."""
        predictor = self.pool.get()
        got = time.perf_counter_ns()
        try:
            return predictor.run(feed), got - since, time.perf_counter_ns() - got
        finally:
            self.pool.put(predictor)

    def execute(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One model call on checked inputs (a batch of requests each checked on arrival)."""
        predictor = self.pool.get()
        try:
            return predictor.runner.run(feed)
        finally:
            self.pool.put(predictor)

    def warm_up(self, rounds: int = 3) -> None:
        profile = self.manifest.profile  # the smallest shape it accepts: warm, and cheap
        feed = {s.name: np.zeros(profile.shape(s, "low"), dtype=s.dtype) for s in self.manifest.inputs}
        for _ in range(rounds * self.pool.qsize()):
            self.run(feed)


class Inference:
    """The served model as the protocols see it. With one model instance the model runs on the event loop (no
    thread hand-off: measured ~90 us less per call than the threaded server); with more, calls run in a thread
    pool, one per instance."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.service: ModelService | None = None  # set once loaded; until then calls are refused as unavailable
        self.executor: futures.ThreadPoolExecutor | None = None
        self.stats = ModelStats()
        self.metrics = Metrics(manifest.name)
        self.batcher: Batcher | None = None

    def loaded(self, service: ModelService, batching: BatchingConfig | None = None) -> None:
        if service.instances > 1:
            self.executor = futures.ThreadPoolExecutor(max_workers=service.instances, thread_name_prefix="kiln-model")
        if batching and batching.on:
            self.batcher = Batcher(self.manifest, batch_dim(self.manifest), service.execute, service.instances,
                                   batching, on_batch=self.stats.executed)
        self.service = service

    def close(self) -> None:
        if self.executor:
            self.executor.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.service is not None

    @property
    def s(self) -> ModelService:
        if self.service is None:
            raise Refused("unavailable", "the model is still loading; retry shortly")
        return self.service

    @property
    def version(self) -> str:
        """The model's v2 version: the store's version number. Triton's versions are integers, and
        perf_analyzer parses them as such (std::stoll): an artifact id such as "a43d..." would stop it."""
        return str(self.manifest.version or 1)

    def serves(self, name: str, version: str = "") -> bool:
        m = self.manifest
        return name in ("", m.name) and version in ("", self.version, m.id)  # the artifact id is accepted too

    def check_model(self, name: str, version: str = "") -> None:
        """Requests name the model (and optionally its version) the way v2 clients do."""
        m = self.manifest
        if name and name != m.name:
            raise Refused("not_found", f"no model {name!r}; this server serves {m.name!r}")
        if not self.serves(name, version):
            raise Refused("not_found", f"no version {version!r} of {m.name!r}; serving version {self.version} "
                                       f"(artifact {m.id})")

    async def _run(self, feed: dict[str, np.ndarray], t: Timing) -> dict[str, np.ndarray]:
        try:
            if self.batcher is not None:  # checked alone, run with whatever arrives within the delay
                done = await self.batcher.submit(self.s.checker.check(feed))
                t.queue, t.compute_infer = done.queue_ns, done.infer_ns
                return done.outputs
            if self.executor is None:
                outputs, t.queue, t.compute_infer = self.s.run_timed(feed, time.perf_counter_ns())
            else:
                outputs, t.queue, t.compute_infer = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.s.run_timed, feed, time.perf_counter_ns())
        except InputError as exc:
            raise Refused("invalid", exc.render()) from None
        return outputs

    async def infer(self, decode: Callable[[], dict[str, np.ndarray]],
                    encode: Callable[[dict[str, np.ndarray]], T]) -> T:
        """decode -> model -> encode, each phase timed into the statistics (Triton's compute_input, queue,
        compute_infer, compute_output); a request that fails anywhere counts as failed."""
        t = Timing()
        try:
            feed = decode()
            t.compute_input = time.perf_counter_ns() - t.start
            outputs = await self._run(feed, t)
            begin = time.perf_counter_ns()
            answer = encode(outputs)
            t.compute_output = time.perf_counter_ns() - begin
        except InputError as exc:
            self.stats.failed(t)
            raise Refused("invalid", exc.render()) from None
        except BaseException:
            self.stats.failed(t)
            raise
        self.stats.succeeded(t, executed=self.batcher is None)  # a batch counts its execution once
        self.metrics.executed.inc()
        self.metrics.computing.inc(t.compute_infer / 1e9)
        return answer

    # -- the program's own service: the user's mapping code on both sides --------------------------------------
    def map_request(self, request) -> dict[str, np.ndarray]:
        try:
            return self.s.program.to_model_inputs(request)
        except Refused:
            raise
        except Exception as exc:  # the user's mapping code rejected the request
            raise Refused("invalid", f"cannot map the request to model inputs: {type(exc).__name__}: {exc}") from None

    def map_response(self, outputs: dict[str, np.ndarray], response_type):
        try:
            return self.s.program.from_model_outputs(outputs, response_type)
        except Exception as exc:
            raise Refused("internal", f"cannot map model outputs to the response: {exc}") from None

    # -- what the v2 metadata, config and statistics calls answer -----------------------------------------------
    def metadata(self) -> dict:
        from kiln.serving.tensors import v2_datatype

        m = self.manifest

        def meta(s):
            return {"name": s.name, "datatype": v2_datatype(s.dtype), "shape": [int(d) for d in s.shape]}

        return {"name": m.name, "versions": [self.version], "platform": f"kiln_{m.backend}",
                "inputs": [meta(s) for s in m.inputs], "outputs": [meta(s) for s in m.outputs]}

    def config(self) -> dict:
        from kiln.serving.model_config import model_config

        return model_config(self.manifest, self.service.instances if self.service else 0,
                            device=self.manifest.settings.device or "cpu",
                            batching=self.batcher.config if self.batcher else None)

    def statistics(self) -> dict:
        """Triton's ModelStatistics in its JSON form (REST); gRPC parses the same dict."""
        st = self.stats
        return {"name": self.manifest.name, "version": self.version, "last_inference": st.last_inference_ms,
                "inference_count": st.inference_count, "execution_count": st.execution_count,
                "inference_stats": st.as_dict(), "batch_stats": st.batch_stats()}

    def index(self) -> list[dict]:
        state = "READY" if self.ready else "LOADING"
        return [{"name": self.manifest.name, "version": self.version, "state": state, "reason": ""}]
