"""ONNX's own backend node tests as a coverage test: ~130 single-operator models, across operator types, each
with its recorded inputs as the program's dataset, optimized with the onnxruntime and tvm candidates at
0 trials. None may end in an internal error: kiln publishes, or refuses with a KilnError that explains why.
A TVM candidate that compiles and agrees is published, or loses only on speed.

The optimize flow runs in this process against the session's Prefect server (a CLI process per case would
spend most of its time starting up), two cases at a time in threads (concurrent flow runs, as a Prefect worker
runs them); user code and candidates run in child processes as always. Without flow-run
heartbeats: their thread sleeps in 1 s steps and each run's end waits for it (~0.4 s of a case's ~2.5 s); they
tell a server that a deployment's run crashed, which no case here is about.
`python benchmarks/node_suite.py` runs the whole suite through the CLI and writes the pass rates."""

from __future__ import annotations

import collections
import contextvars
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

SAMPLE = 130  # 130 operator types; 150 cases took ~400 s on 2 cores
THREADS = 2  # flows at once: a case waits on its child processes and the Prefect server half of the time


@pytest.mark.integration
def test_node_suite_sample_has_no_internal_errors(prefect_server, tmp_path, monkeypatch):
    import node_suite
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.optimize import optimize
    from kiln.errors import KilnError
    from kiln.optimize.request import OptimizeRequest

    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KILN_STORE", str(tmp_path / "store"))
    cases = node_suite.cases(SAMPLE)
    assert len(cases) == SAMPLE and len({c[1].graph.node[0].op_type for c in cases}) >= 120  # across op types
    outcomes: collections.Counter[str] = collections.Counter()
    internal, gate_mistakes, tvm_agrees = [], [], 0

    def run(case) -> tuple[str, object]:
        folder = node_suite.write_program(case, tmp_path / "programs" / case[0])
        request = OptimizeRequest(program=str(folder), candidates=["onnxruntime", "tvm"], trials=0,
                                  latency_repeats=20, compare_with_current=False)
        try:
            return "published", optimize(request)
        except KilnError as exc:
            return "refused: " + type(exc).__name__, None
        except Exception as exc:  # anything else is a kiln bug
            return "internal", f"{case[0]}: {type(exc).__name__}: {str(exc)[:300]}"

    with temporary_settings({PREFECT_API_URL: prefect_server, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), \
            ThreadPoolExecutor(THREADS) as pool:
        # each case in a copy of this thread's context (the Prefect settings above live in context variables)
        done = [pool.submit(contextvars.copy_context().run, run, case) for case in cases]
        for case, future in zip(cases, done, strict=True):
            outcome, result = future.result()
            if outcome == "internal":
                internal.append(result)
                continue
            outcomes[outcome] += 1
            if result is None:
                continue
            manifest = result.manifest
            tvm = next(c for c in manifest.candidates if c.name == "tvm")
            if tvm.metrics and all(m.passed for m in tvm.metrics.values()):
                tvm_agrees += 1
                if manifest.selected != "tvm" and not any(r.startswith(("slower than", "not faster than")) or
                                                          "was not confirmed faster" in r for r in tvm.reasons):
                    gate_mistakes.append(f"{case[0]}: tvm agrees but was not published: {tvm.reasons}")
    summary = f"{dict(outcomes)}; tvm agrees on {tvm_agrees}/{len(cases)}"
    print(summary)
    assert not internal, f"internal errors ({len(internal)}; {summary}):\n" + "\n".join(internal)
    assert not gate_mistakes, "\n".join(gate_mistakes)
    assert outcomes["published"] >= 0.75 * len(cases), summary  # onnxruntime runs ~84 % of the suite
    # benchmarks/node_suite.json measured TVM agreeing on 79 of these 130 cases (61 %; 58.4 % of the whole suite,
    # ONNX 1.23.2, TVM 0.27): half leaves ~14 cases of room for version drift, yet a TVM path or an output
    # comparison that breaks (no build, no run, every metric failing) drops far below it
    assert tvm_agrees >= 0.5 * len(cases), summary
