"""ONNX's own backend node tests as a coverage test: 60 single-operator models, of 60 operator types, each
with its recorded inputs as the program's dataset, optimized with the onnxruntime and tvm candidates at
0 trials. None may end in an internal error: kiln publishes, or refuses with a KilnError that explains why.
A TVM candidate that compiles and agrees is published, or loses only on speed.

The optimize flow runs against the session's Prefect server in WORKERS worker processes (a CLI process per case
would spend most of its time starting up), that many cases at a time, each flow run in a process as a Prefect worker
runs it; user code and candidates run in child processes as always.
`python benchmarks/node_suite.py` runs the whole suite through the CLI and writes the pass rates."""

from __future__ import annotations

import collections
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

SAMPLE = 60  # one case each of 60 operator types spread over all of them (80 took 141 s in a clean-clone run)
WORKERS = 3  # flows at once: a case waits on its child processes and the Prefect server half of the time


@pytest.mark.integration
def test_node_suite_sample_has_no_internal_errors(prefect_server, tmp_path, monkeypatch):
    import node_suite

    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KILN_STORE", str(tmp_path / "store"))
    cases = node_suite.cases(SAMPLE)
    assert len(cases) == SAMPLE and len({c[1].graph.node[0].op_type for c in cases}) == SAMPLE  # op types
    outcomes: collections.Counter[str] = collections.Counter()
    internal, gate_mistakes, tvm_agrees = [], [], 0

    # worker processes, as a Prefect worker runs each flow run in its own (they inherit this environment)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    # Prefect on SQLite answers 503 to a write that lost a lock race; its client retries 5 times (~1 min of
    # backoff), which three flows starting at once on 2 cores outlasted once in CI (a 503 named as test_and2d's
    # internal error): give the client the patience of a loaded machine
    monkeypatch.setenv("PREFECT_CLIENT_MAX_RETRIES", "10")
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(node_suite.run_kiln,
                             [node_suite.write_program(case, tmp_path / "programs" / case[0]) for case in cases]))
    for case, row in zip(cases, rows, strict=True):
        if row["outcome"] == "internal error":
            internal.append(f"{case[0]}: {row['message']}")
            continue
        outcomes["published" if row["outcome"] == "published" else "refused: " + row["error"]] += 1
        if row.get("tvm_passed"):
            tvm_agrees += 1
            if row["selected"] != "tvm" and not any(r.startswith(("slower than", "not faster than")) or
                                                    "was not confirmed faster" in r for r in row["tvm_reasons"]):
                gate_mistakes.append(f"{case[0]}: tvm agrees but was not published: {row['tvm_reasons']}")
    summary = f"{dict(outcomes)}; tvm agrees on {tvm_agrees}/{len(cases)}"
    print(summary)
    assert not internal, f"internal errors ({len(internal)}; {summary}):\n" + "\n".join(internal)
    assert not gate_mistakes, "\n".join(gate_mistakes)
    assert outcomes["published"] >= 0.75 * len(cases), summary  # onnxruntime runs ~84 % of the suite
    # benchmarks/node_suite.json measured TVM agreeing on 58.4 % of the whole suite (ONNX 1.23.2, TVM 0.27; on 36 of
    # these 60 cases, 55 published): half leaves room for version drift, yet a TVM path or an output comparison that
    # breaks (no build, no run, every metric failing) drops far below it
    assert tvm_agrees >= 0.5 * len(cases), summary
