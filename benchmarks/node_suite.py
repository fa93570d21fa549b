"""ONNX's own backend node tests through kiln: how many single-operator models kiln optimizes without an
internal error, and how often its TVM candidate compiles and agrees, beside raw TVM and onnxruntime.

The cases come from the installed onnx package (`onnx.backend.test.case.node.collect_testcases`: each an
ONNX model with its inputs and expected outputs). Each becomes a model program: model.onnx, data.npz with the
recorded inputs as one whole-tensor sample, and program.py naming it. Then, per case:
- kiln: the optimize flow (in this process, against one Prefect server; what `kiln optimize` runs) with the
  onnxruntime and tvm candidates at 0 trials: outcome published / gate (GateError) / mistake (another
  KilnError) / internal error (anything else: a kiln bug), and whether the tvm candidate passed its ranges;
- raw TVM: relax's ONNX importer, the default pipeline, and the recorded outputs (allclose 1e-3);
- onnxruntime: an InferenceSession and the recorded outputs (allclose 1e-3).

    python benchmarks/node_suite.py            # the whole suite (1,855 cases with tensor I/O; ~2 h on 2 cores)
    python benchmarks/node_suite.py --limit 40 # a sample, one case per operator first
    python benchmarks/node_suite.py --report   # RESULTS.md's figures from what was measured so far

Writes benchmarks/node_suite.json, and through benchmarks/report.py the figures of RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, TimeoutError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402

PROGRAM = '''import kiln


class NodeCase(kiln.ModelProgram):
    name = {name!r}
    dataset = kiln.Dataset(path="data.npz")
    allow_nonfinite = True  # some cases feed inf or nan on purpose
'''


def cases(limit: int | None = None):
    """(name, model, inputs, outputs) of the cases with tensor inputs and outputs, one per operator first."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = collect_testcases(None)
    usable = []
    for c in found:
        g = c.model.graph
        if not c.data_sets or not all(v.type.HasField("tensor_type") for v in [*g.input, *g.output]):
            continue
        inputs, outputs = c.data_sets[0]
        if any(not isinstance(a, np.ndarray) or a.dtype == object for a in [*inputs, *outputs]):
            continue
        usable.append((c.name, c.model, inputs, outputs))
    if limit is None:
        return usable
    by_op: dict[str, list] = collections.defaultdict(list)
    for case in usable:
        by_op[case[1].graph.node[0].op_type if case[1].graph.node else "?"].append(case)
    ops = sorted(by_op)
    if limit < len(ops):  # fewer cases than operator types: one each, spread over the alphabet
        return [by_op[ops[int(i)]][0] for i in np.linspace(0, len(ops) - 1, limit).round()]
    picked, rank = [], 0
    while len(picked) < limit and any(len(v) > rank for v in by_op.values()):
        picked += [v[rank] for _, v in sorted(by_op.items()) if len(v) > rank]
        rank += 1
    return picked[:limit]


def write_program(case, folder: Path) -> Path:
    """The case as a kiln program: model.onnx, data.npz (the recorded inputs as one sample), program.py."""
    import onnx

    name, model, inputs, _ = case
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    np.savez(folder / "data.npz", **{n: np.asarray(a)[None] for n, a in zip(names, inputs, strict=False)})
    (folder / "program.py").write_text(PROGRAM.format(name=name.removeprefix("test_").replace("_", "-")))
    return folder


def run_kiln(folder: Path) -> dict:
    """The optimize flow on one case: the outcome and the tvm candidate's verdict (a picklable dict: the suite's
    test runs cases in worker processes, as Prefect workers run flow runs). Without flow-run heartbeats: their
    thread sleeps in 1 s steps and each run's end waits for it (~0.4 s of a case's ~2.5 s); they tell a server
    that a deployment's run crashed, which no case here is about."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.optimize import optimize
    from kiln.errors import GateError, KilnError
    from kiln.optimize.request import OptimizeRequest

    start = time.perf_counter()
    out: dict = {}
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            result = optimize(OptimizeRequest(program=str(folder), candidates=["onnxruntime", "tvm"], trials=0,
                                              latency_repeats=20, compare_with_current=False))
        tvm = next(c for c in result.manifest.candidates if c.name == "tvm")
        out.update(outcome="published", selected=result.manifest.selected, tvm_passed=tvm.passed or (
            bool(tvm.metrics) and all(m.passed for m in tvm.metrics.values())), tvm_reasons=tvm.reasons)
    except GateError as exc:
        out.update(outcome="gate", error=type(exc).__name__, message=exc.message)
    except KilnError as exc:
        out.update(outcome="mistake", error=type(exc).__name__, message=exc.render()[-400:])
    except Exception as exc:  # a kiln bug: where it broke, so that a flaky one can be read from CI's log
        where = traceback.extract_tb(exc.__traceback__)[-3:]
        out.update(outcome="internal error", error=type(exc).__name__, message=f"{type(exc).__name__}: "
                   f"{str(exc)[:600]} at " + " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                                          for f in reversed(where)))
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def _close(got, want) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "fc":
        return bool(np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3, atol=1e-3,
                                equal_nan=True))
    return bool(np.array_equal(got, want))


def raw_checks(case) -> dict:
    """Raw TVM and onnxruntime on the recorded inputs and outputs (a child process: either may crash)."""
    import onnxruntime as ort

    _, model, inputs, outputs = case
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    feed = dict(zip(names, inputs, strict=False))
    result = {}
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        got = session.run(None, feed)
        result["onnxruntime"] = all(_close(g, w) for g, w in zip(got, outputs, strict=True))
    except Exception:
        result["onnxruntime"] = False
    try:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        mod = from_onnx(model, {n: list(np.shape(a)) for n, a in feed.items()},
                        {n: np.asarray(a).dtype.name for n, a in feed.items()}, keep_params_in_input=False)
        ex = tvm.compile(mod, target="llvm")
        vm = relax.VirtualMachine(ex, tvm.cpu())
        got = vm["main"](*[tvm.runtime.tensor(np.asarray(a), tvm.cpu()) for a in feed.values()])
        got = [got] if hasattr(got, "numpy") else list(got)
        result["raw_tvm"] = all(_close(g.numpy(), w) for g, w in zip(got, outputs, strict=True))
    except Exception:
        result["raw_tvm"] = False
    return result


class RawChecks:
    """raw_checks in one long-lived child process (TVM imported once), started again after a crash."""

    def __init__(self):
        self.pool = None

    def __call__(self, case) -> dict:
        import multiprocessing

        if self.pool is None:
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return self.pool.submit(raw_checks, case).result(timeout=180)
        except (BrokenProcessPool, TimeoutError):
            self.pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.kill()
            self.pool = None
            return {"onnxruntime": False, "raw_tvm": False, "raw_crashed": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="a sample of N cases (default: all)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "node_suite")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "node_suite.json")
    parser.add_argument("--fresh", action="store_true", help="measure every case again instead of resuming")
    parser.add_argument("--report", action="store_true", help="only rewrite the figures from the saved results")
    args = parser.parse_args()
    picked = cases(args.limit)
    if args.report:
        saved = json.loads(args.out.read_text())
        rows, dated = saved["cases"], {k: saved[k] for k in ("date", "date_source") if k in saved}
        args.out.write_text(json.dumps({**dated, "summary": summarize(rows, len(picked)), "cases": rows}, indent=1)
                            + "\n")
        report.rewrite()
        return
    home = args.work / "home"
    env = {**os.environ, "KILN_HOME": str(home), "KILN_STORE": str(args.work / "store"),
           "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = None
    if not env.get("PREFECT_API_URL"):  # one server for every run: embedded Prefect would start one per case
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        (home / "prefect").mkdir(parents=True, exist_ok=True)
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--port",
                                   str(port)], env={**env, "PREFECT_UI_ENABLED": "false"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        import httpx

        for _ in range(240):
            try:
                if httpx.get(env["PREFECT_API_URL"] + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("KILN_", "PREFECT_"))})
    done = {}  # resumable: cases already measured (same limit) are kept
    if args.out.is_file() and not args.fresh:
        done = {r["case"]: r for r in json.loads(args.out.read_text()).get("cases", [])}
    rows, raw = [], RawChecks()
    try:
        for i, case in enumerate(picked):
            if case[0] in done:
                rows.append(done[case[0]])
                continue
            folder = write_program(case, args.work / "programs" / case[0])
            row = {"case": case[0], "op": case[1].graph.node[0].op_type, **run_kiln(folder), **raw(case)}
            rows.append(row)
            if len(rows) % 10 == 0:  # progress survives an interruption
                args.out.write_text(json.dumps({"summary": summarize(rows, len(picked)), "cases": rows}, indent=1)
                                    + "\n")
            print(f"[{i + 1}/{len(picked)}] {case[0]}: {row['outcome']} tvm={row.get('tvm_passed')} "
                  f"raw_tvm={row['raw_tvm']} ort={row['onnxruntime']}", flush=True)
    finally:
        if server:
            server.terminate()
    summary = summarize(rows, len(picked))
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "summary": summary, "cases": rows}, indent=1)
                        + "\n")
    print(json.dumps(summary, indent=2))
    if args.limit is None and args.out == ROOT / "benchmarks" / "node_suite.json":  # a sample's rates stay out
        report.rewrite()


def summarize(rows: list[dict], total: int) -> dict:
    """Pass rates, with what RESULTS.md says beside them (the suite's size, the versions, the CPU)."""
    n = len(rows)
    count = collections.Counter(r["outcome"] for r in rows)
    pct = lambda k: round(100 * k / n, 1) if n else 0.0  # noqa: E731
    return {"cases": n, "outcomes": dict(count), "internal_errors": count["internal error"],
            "kiln_tvm_pass_pct": pct(sum(bool(r.get("tvm_passed")) for r in rows)),
            "raw_tvm_pass_pct": pct(sum(r["raw_tvm"] for r in rows)),
            "onnxruntime_pass_pct": pct(sum(r["onnxruntime"] for r in rows)),
            "kiln_published_pct": pct(count["published"]), "cpu": _cpu(), "total": total,
            "versions": {"onnx": _version("onnx"), "tvm": _version("apache-tvm"),
                         "onnxruntime": _version("onnxruntime")}}


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
