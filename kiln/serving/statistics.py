"""What the server counts: Triton's per-model statistics (v2 `ModelStatistics`, `GET /v2/models/NAME/stats`)
and Prometheus metrics (`GET /metrics`), both fed by the one place every inference passes through.

Triton's statistics split a request's time into queue (waiting for a free model instance), compute_input
(decoding and mapping the request), compute_infer (the model) and compute_output (encoding the response);
perf_analyzer prints them as the server-side part of its latency. The Prometheus metrics are per protocol and
method, so gRPC, REST and the program's own service show up side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# from 100 us (the digits model over gRPC) to 10 s (a transformer on a busy CPU)
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class Timing:
    """One request's phases in nanoseconds, filled in as it goes."""

    start: int = field(default_factory=time.perf_counter_ns)
    queue: int = 0
    compute_input: int = 0
    compute_infer: int = 0
    compute_output: int = 0


@dataclass
class ModelStats:
    """Triton's InferStatistics for the one model a kiln server serves."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> executions (and their compute ns)

    def succeeded(self, t: Timing, rows: int = 1, executed: bool = True) -> None:
        """One request answered; `executed`: it ran alone (a dynamic batch counts its execution in `executed`)."""
        self.success.add(time.perf_counter_ns() - t.start)
        for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
            getattr(self, phase).add(getattr(t, phase))
        self.inference_count += rows
        if executed:
            self.executed(1, rows, t.compute_infer)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def executed(self, requests: int, rows: int, ns: int = 0) -> None:
        """One model execution, of `requests` requests holding `rows` rows: Triton's execution_count, and its
        batch_stats by batch size."""
        self.execution_count += 1
        self.batches.setdefault(rows, Duration()).add(ns)  # a request of its own counts as a batch of its rows

    def batch_stats(self) -> list[dict]:
        """Triton's batch_stats: per batch size, how many executions (compute_infer holds their count)."""
        return [{"batch_size": size, "compute_infer": {"count": d.count, "ns": d.ns}}
                for size, d in sorted(self.batches.items())]

    def failed(self, t: Timing) -> None:
        self.fail.add(time.perf_counter_ns() - t.start)

    def as_dict(self) -> dict:
        """The JSON form of Triton's `inference_stats` (REST: counts and ns as numbers)."""
        phases = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
        return {p: {"count": getattr(self, p).count, "ns": getattr(self, p).ns} for p in phases}


class Metrics:
    """Prometheus metrics in a registry of their own (not the process-global one: tests start many servers)."""

    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        self.model = model
        self.requests = Counter("kiln_requests", "Requests answered, by protocol, method and status code",
                                ["model", "protocol", "method", "code"], registry=self.registry)
        self.latency = Histogram("kiln_request_duration_seconds", "Time from a request's arrival to its answer",
                                 ["model", "protocol", "method"], buckets=BUCKETS, registry=self.registry)
        self.in_flight = Gauge("kiln_requests_in_flight", "Requests being answered now", ["model"],
                               registry=self.registry)
        self.inferences = Counter("kiln_inferences", "Model executions that succeeded", ["model"],
                                  registry=self.registry)
        self.infer_seconds = Counter("kiln_inference_compute_seconds", "Time spent in the model itself",
                                     ["model"], registry=self.registry)
        # the labelled children, looked up once: a labels() call per request costs a lock and a few us
        self.active = self.in_flight.labels(model)
        self.executed = self.inferences.labels(model)
        self.computing = self.infer_seconds.labels(model)
        self._children: dict[tuple[str, str, str], tuple] = {}

    def observe(self, protocol: str, method: str, code: str, seconds: float) -> None:
        key = (protocol, method, code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(self.model, protocol, method, code),
                                              self.latency.labels(self.model, protocol, method))
        children[0].inc()
        children[1].observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
