"""Dynamic batching, as Triton's dynamic batcher does it: requests to a model whose first axis is a dynamic
batch wait up to `max_queue_delay_us` for others to join, up to `max_batch` rows, then run as one call, and
each caller gets exactly its own rows back.

Requests of unequal length are padded to the longest in the batch only where the program says how
(`padding = {"attention_mask": 0, "input_ids": 0, ...}` names a value for every input that varies, carried on the
profile's dimensions) and the profile relates every dynamic output axis to a dimension: each caller's outputs are
cut back to its own length by the one rule the bucket runner uses too (Dim.cut: exactly the dimension's output
axes), so an output axis nothing relates to the padded length could not be cut, and such requests do not share
a batch. Without padding, only requests of equal shapes share a batch.
While every model instance is busy, requests keep queuing, so batches grow under load; a batch runs in a
thread, so the event loop goes on decoding and checking the next requests meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from kiln.artifact.manifest import Manifest
from kiln.artifact.specs import Axis, Dim
from kiln.errors import KilnError

Feed = dict[str, np.ndarray]


class BatchingConfig(BaseModel):
    """`kiln serve --max-batch N --max-queue-delay-us D`: off while the delay is 0."""

    max_batch: int = 0  # 0: the batch dimension's upper end
    max_queue_delay_us: int = 0

    @property
    def on(self) -> bool:
        return self.max_queue_delay_us > 0

    def checked(self, manifest: Manifest, batch: Dim | None) -> BatchingConfig:
        """This config with max_batch resolved; KilnError when the model cannot batch like that."""
        if not self.on:
            return self
        if batch is None:
            raise KilnError(f"dynamic batching needs a dynamic batch dimension (the first axis of every input), and "
                            f"{manifest.name}'s inputs accept {manifest.profile.explain()}",
                            hint="optimize it with a batch range, e.g. --dim batch_size=1..8, or serve it without "
                                 "--max-queue-delay-us")
        size = self.max_batch or batch.high
        if not batch.low <= size <= batch.high:
            raise KilnError(f"--max-batch {size} is outside the batch range {batch.low}..{batch.high} the model was "
                            "optimized and checked for", hint=f"use a --max-batch from {batch.low} to {batch.high}")
        # an output leads with the batch when its first axis is dynamic and no other dimension's (an output
        # [sequence, batch] would be cut along the sequence, and each caller would get wrong rows)
        other = {a for d in manifest.profile.dims if d.name != batch.name for a in d.outputs}
        unbatched = [s.name for s in manifest.outputs if not s.shape or s.shape[0] >= 0 or Axis(s.name, 0) in other]
        if unbatched:  # each caller's rows could not be told apart
            raise KilnError(f"dynamic batching needs every output to lead with the batch axis; {unbatched} do not "
                            f"({[(s.name, s.shape) for s in manifest.outputs]})",
                            hint="serve it without --max-queue-delay-us")
        return self.model_copy(update={"max_batch": size})


@dataclass(eq=False)  # compared by identity: the queue removes the very request it took
class Pending:
    feed: Feed
    rows: int
    future: asyncio.Future
    arrived: int = field(default_factory=time.perf_counter_ns)


@dataclass
class Executed:
    """What one model execution reports back to each of its requests."""

    outputs: Feed
    queue_ns: int
    infer_ns: int
    batch: int


class Batcher:
    """Collects requests into batches and runs each with `execute(feed) -> outputs` on a free instance."""

    def __init__(self, manifest: Manifest, batch: Dim, execute: Callable[[Feed], Feed], instances: int,
                 config: BatchingConfig, on_batch: Callable[[int, int, int], None] | None = None):
        self.manifest, self.batch_dim = manifest, batch
        self.config = config
        self.execute, self.max_batch, self.delay_s = execute, config.max_batch, config.max_queue_delay_us / 1e6
        self.varying = [d for d in manifest.profile.varying if d is not batch]
        self.can_pad = bool(self.varying) and all(d.pads for d in self.varying) and \
            not manifest.profile.unrelated(manifest.outputs)
        self.padded = {a for d in self.varying for a in d.axes} if self.can_pad else set()
        self.on_batch = on_batch
        self.free = asyncio.Semaphore(instances)
        self.queue: list[Pending] = []
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def submit(self, feed: Feed) -> Executed:
        """Queue one checked request; its own rows of the batch's outputs come back."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._collect())
        rows = int(np.shape(next(iter(feed.values())))[0]) if feed else 1
        pending = Pending(feed, rows, asyncio.get_running_loop().create_future())
        self.queue.append(pending)
        self.arrived.set()
        return await pending.future

    def _key(self, p: Pending) -> tuple:
        """Requests that may share a batch have equal keys: every axis but the batch's, or with padding, every
        axis but the batch's and the padded ones."""
        return tuple((n, tuple(s for i, s in enumerate(np.shape(a)) if i and Axis(n, i) not in self.padded))
                     for n, a in sorted(p.feed.items()))

    def _take(self) -> list[Pending]:
        """The oldest request and those that fit with it, up to max_batch rows, oldest first (a request of more
        rows than max_batch, which the profile allows, runs alone)."""
        first = self.queue[0]
        key, rows, chosen = self._key(first), first.rows, [first]
        for p in self.queue[1:]:
            if self._key(p) == key and rows + p.rows <= self.max_batch:
                chosen.append(p)
                rows += p.rows
        taken = {id(p) for p in chosen}
        self.queue = [p for p in self.queue if id(p) not in taken]
        return chosen

    async def _collect(self) -> None:
        while True:
            if not self.queue:
                self.arrived.clear()
                await self.arrived.wait()
            await self.free.acquire()  # while every instance is busy, requests gather
            try:
                deadline = self.queue[0].arrived / 1e9 + self.delay_s
                while sum(p.rows for p in self.queue) < self.max_batch and time.perf_counter() < deadline:
                    self.arrived.clear()
                    try:
                        await asyncio.wait_for(self.arrived.wait(), max(0.0, deadline - time.perf_counter()))
                    except TimeoutError:
                        break
                batch = self._take()
            except Exception as exc:  # never leave callers waiting on a batcher that stopped
                self.free.release()
                for p in self.queue:
                    if not p.future.done():
                        p.future.set_exception(exc)
                self.queue = []
                continue
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[Pending]) -> None:
        try:
            feed, lengths = self._stack(batch)
            start = time.perf_counter_ns()
            outputs = await asyncio.get_running_loop().run_in_executor(None, self.execute, feed)
            infer_ns = time.perf_counter_ns() - start
            if self.on_batch:
                self.on_batch(len(batch), sum(p.rows for p in batch), infer_ns)
            row = 0
            for p, own in zip(batch, lengths, strict=True):
                if not p.future.done():
                    p.future.set_result(Executed(self._cut(outputs, row, p.rows, own), start - p.arrived,
                                                 infer_ns, len(batch)))
                row += p.rows
        except Exception as exc:  # the batch failed: each of its callers hears why
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self.free.release()

    def _stack(self, batch: list[Pending]) -> tuple[Feed, list[dict[str, int]]]:
        """One feed of every request's rows, padded to the longest where the program says how; and each
        request's own value of each padded dimension."""
        lengths = [{d.name: v for d in self.varying if (v := d.value(p.feed)) is not None} for p in batch]
        if len(batch) == 1:
            return batch[0].feed, lengths
        feeds = [p.feed for p in batch]
        for d in self.varying if self.can_pad else []:
            longest = max(own.get(d.name, 0) for own in lengths)
            feeds = [d.pad(f, longest) for f in feeds]
        return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in batch[0].feed}, lengths

    def _cut(self, outputs: Feed, row: int, rows: int, own: dict[str, int]) -> Feed:
        """A caller's rows of each output, each padded dimension's output axes cut back to its own length."""
        # every output leads with the batch axis (BatchingConfig.checked)
        out = {name: np.asarray(arr)[row : row + rows] for name, arr in outputs.items()}
        for d in self.varying if self.can_pad else []:
            if d.name in own:
                out = d.cut(out, own[d.name])
        return out
