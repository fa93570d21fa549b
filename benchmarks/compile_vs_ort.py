"""TVM vs onnxruntime on this machine: median latency, batch 1, both measured in the same process.

    python benchmarks/compile_vs_ort.py [--models digits resnet18 encoder] [--budgets digits=0,64 ...]
    python benchmarks/compile_vs_ort.py --target cuda --budgets digits=0 resnet18=0 encoder=0   # on a GPU
    python benchmarks/compile_vs_ort.py --target cuda --models encoder --budgets encoder=0,256 --tune-minutes 2

For each model: onnxruntime (all graph optimizations, all cores, CPU), then TVM built with each trial budget
(0 = no search: on CUDA, TVM's DLight default schedules; the MetaSchedule database starts empty for every
budget, and each search stops after --tune-minutes), each measured right after the other. TVM on CUDA is timed
end to end from the host (inputs copied in, outputs copied out), as a caller sees it. Writes results.json
(results-cuda.json) after each model, and through benchmarks/report.py the figures of RESULTS.md and README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from kiln.artifact.manifest import versions  # noqa: E402
from kiln.compiler import Limits, compile_model, device_for, target_config  # noqa: E402
from kiln.optimize.inspect import input_specs, load_model, output_specs  # noqa: E402
from kiln.optimize.prepare import prepare_model  # noqa: E402
from kiln.runtime.latency import measure  # noqa: E402
from kiln.runtime.runners import OrtRunner, TvmRunner  # noqa: E402

MODELS = {
    "digits": ("examples/digits/model.onnx", "examples/digits/train.py", {"pixels": [1, 64]}),
    "resnet18": ("examples/resnet18/model.onnx", "examples/resnet18/make_model.py", {"input": [1, 3, 224, 224]}),
    "encoder": ("examples/encoder/model.onnx", "examples/encoder/make_model.py", {}),
}
BUDGETS = {"digits": [0, 64], "resnet18": [0, 128], "encoder": [0, 128]}
WORK = ROOT / "benchmarks" / "work"
# a private copy of stdout: tuning sends fds 1/2 to its log file, the progress line must stay visible
CONSOLE = os.fdopen(os.dup(1), "w", buffering=1)


def feed_for(specs, seed=0):
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in specs}


def bench_model(name: str, budgets: list[int], threads: int, target: str = "llvm",
                tune_seconds: float | None = None) -> dict:
    rel, script, shapes = MODELS[name]
    path = ROOT / rel
    if not path.is_file():
        subprocess.run([sys.executable, str(ROOT / script)], check=True)
    model = load_model(path)
    inputs = input_specs(model, shapes, rel)
    outputs = output_specs(model)
    work = WORK / (name if target == "llvm" else f"{name}-{target}")
    shutil.rmtree(work, ignore_errors=True)
    prepared = work / "prepared.onnx"
    prepare_model(model, inputs, prepared, rel)
    feed = feed_for(inputs)
    ort_runner = OrtRunner(path, threads=threads)
    want = ort_runner.run(feed)
    ort_lat = measure(lambda: ort_runner.run(feed), repeats=300, max_seconds=10)
    print(f"[{name}] onnxruntime p50 {ort_lat.p50:.4f} ms", flush=True)
    rows = []
    for budget in budgets:
        t0 = time.perf_counter()
        res = compile_model(prepared, inputs, target=target, limits=Limits(trials=budget, seconds=tune_seconds),
                            db_dir=work / f"db-{budget}", out=work / f"tvm-{budget}.so",
                            progress=lambda p: print(f"\r[{name}] tuning: {p.describe()}", end="", file=CONSOLE))
        build_s = time.perf_counter() - t0
        runner = TvmRunner(res.module, inputs, outputs, threads=threads, device=device_for(target))
        got = runner.run(feed)
        err = max(float(np.max(np.abs(got[k] - want[k])) / (np.max(np.abs(want[k])) or 1)) for k in want)
        lat = measure(lambda r=runner: r.run(feed), repeats=300, max_seconds=10, min_repeats=5)
        # re-measure onnxruntime right after, so both numbers come from the same moment of this run
        ort_again = measure(lambda: ort_runner.run(feed), repeats=300, max_seconds=5)
        rows.append({"trials": budget, "tasks": len(res.tuning.tasks), "trials_run": res.tuning.trials,
                     "failed_trials": res.tuning.failed, "stopped_by": res.tuning.stopped_by,
                     "tasks_measured": res.tuning.measured_tasks,
                     "cost_model": res.tuning.cost_model, "estimated_ms": res.tuning.estimated_ms,
                     "build_s": round(build_s, 1),
                     "tvm_p50_ms": lat.p50, "tvm_p90_ms": lat.p90, "ort_p50_ms": ort_again.p50,
                     "ratio_tvm_over_ort": lat.p50 / ort_again.p50, "max_rel_diff": err})
        print(f"\n[{name}] trials {budget}: TVM p50 {lat.p50:.4f} ms vs onnxruntime {ort_again.p50:.4f} ms "
              f"(x{lat.p50 / ort_again.p50:.2f}), build {build_s:.0f} s, rel diff {err:.2e}", flush=True)
        runner.close()
    return {"model": name, "shapes": {s.name: s.shape for s in inputs}, "ort_p50_ms": ort_lat.p50,
            "ort_p90_ms": ort_lat.p90, "runs": rows}


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out.splitlines()[0] if out else "no GPU found"


def machine(target: str = "llvm") -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "llvm_mcpu": target_config("llvm")["mcpu"],
            "python": platform.python_version(), "os": platform.platform(),
            **({"gpu": gpu_name()} if target == "cuda" else {})}


def write_results(results: list[dict], info: dict, target: str = "llvm") -> None:
    """Save results.json (results-cuda.json) and let report.py write every figure that comes from it."""
    name = "results.json" if target == "llvm" else f"results-{target}.json"
    (ROOT / "benchmarks" / name).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": info,
                                                        "versions": versions(), "results": results}, indent=2))
    report.rewrite()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budgets", nargs="*", default=[], help="MODEL=T1,T2 overrides, e.g. resnet18=0,100")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--target", choices=["llvm", "cuda"], default="llvm", help="where TVM's code runs")
    parser.add_argument("--tune-minutes", type=float, default=None, help="wall-clock cap on each search")
    args = parser.parse_args()
    budgets = dict(BUDGETS)
    for item in args.budgets:
        name, _, values = item.partition("=")
        budgets[name] = [int(v) for v in values.split(",")]
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    command = " ".join(["python benchmarks/compile_vs_ort.py", *sys.argv[1:]])
    results = []
    for m in args.models:  # written after each model: a run stopped part-way keeps what it measured
        results.append({**bench_model(m, budgets[m], args.threads, args.target,
                                      args.tune_minutes * 60 if args.tune_minutes else None), "command": command})
        write_results(results, machine(args.target), args.target)


if __name__ == "__main__":
    main()
