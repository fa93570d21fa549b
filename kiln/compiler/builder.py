"""MetaSchedule's LocalBuilder with a worker pool that outlives one batch.

LocalBuilder starts a fresh pool of worker processes for every batch of candidates (a guard against a memory
leak in long-lived workers), and each worker imports TVM first: 17-19 s per batch on these 2-core machines,
before anything is built. The gradient scheduler sends one batch per task per round, so a first round over a
25-task transformer paid ~8 minutes of start-up alone, most of a 10-minute budget. Here the pool is kept and
recycled every `recycle` batches instead, which still bounds what a leak can grow to. A worker's start-up was
mostly TVM's tensor intrinsics, whose import each worker now does without its inspect.stack() cost
(kiln.compiler.tvm_imports): ~19 s -> ~2 s.
"""

from __future__ import annotations

RECYCLE_BATCHES = 32


def pooled_builder(max_workers: int, timeout_sec: float, recycle: int = RECYCLE_BATCHES):
    """A MetaSchedule builder (the same build and export functions, errors and timeouts as LocalBuilder)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    from kiln.compiler.tvm_imports import tensor_intrinsics

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool, self.batches = None, 0

        def build(self, build_inputs):
            if self.pool is None or self.batches >= recycle:
                self.close()
                self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec,
                                              initializer=tensor_intrinsics)
            self.batches += 1
            work = [(None, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            results = []
            for done in self.pool.map_with_error_catching(lambda args: _worker_func(*args), work):
                if done.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(done.value, None))
                elif done.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {timeout_sec} seconds"))
                else:
                    results.append(BuilderResult(None, f"LocalBuilder: An exception occurred\n{done.value}"))
            return results

        def close(self) -> None:
            if self.pool is not None:
                self.pool.shutdown()
            self.pool, self.batches = None, 0

    return PooledBuilder()
