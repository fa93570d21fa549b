"""Compression candidates vs onnxruntime fp32, same process, same threads (calibration on synthetic data).

    python benchmarks/compression.py [--models resnet18 encoder] [--calibration 16]

Per model: every onnxruntime candidate of kiln.optimize.candidates is built (int8 static calibrated on
--calibration synthetic inputs, MinMax), then each is timed right after the fp32 baseline. Accuracy on
random weights and synthetic inputs means little, so the table shows agreement with fp32 (cosine, arg-max)
for orientation only; the gate in a real run uses the program's data. Writes benchmarks/compression.json, and
through benchmarks/report.py the figures of RESULTS.md and README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from kiln.optimize import candidates  # noqa: E402
from kiln.optimize.feeds import feeds  # noqa: E402
from kiln.optimize.inspect import input_specs, load_model  # noqa: E402
from kiln.optimize.prepare import prepare_model  # noqa: E402
from kiln.program.datasets import synthetic  # noqa: E402
from kiln.runtime.latency import measure  # noqa: E402
from kiln.runtime.runners import OrtRunner  # noqa: E402

MODELS = {"resnet18": {"input": [1, 3, 224, 224]}, "encoder": {}}


def bench(name: str, n_cal: int, threads: int) -> list[dict]:
    path = ROOT / "examples" / name / "model.onnx"
    if not path.is_file():
        subprocess.run([sys.executable, str(path.with_name("make_model.py"))], check=True)
    model = load_model(path)
    specs = input_specs(model, MODELS[name], str(path))
    work = Path(tempfile.mkdtemp(prefix=f"kiln-compress-{name}-"))
    prepared = work / "prepared.onnx"
    prepare_model(model, specs, prepared, str(path))
    calib = feeds(synthetic(specs, [], count=n_cal, seed=1), specs)
    feed = feeds(synthetic(specs, [], count=1, seed=2), specs)[0]
    base = OrtRunner(path, threads=threads)
    want = base.run(feed)
    rows = []
    for cand in (candidates.get(n) for n in candidates.names() if candidates.get(n).stage == "transform"):
        folder = work / cand.name
        folder.mkdir()
        t0 = time.perf_counter()
        try:
            ctx = candidates.BuildContext(model=path, prepared=prepared, out_dir=folder, calibration=calib)
            built = cand.build(ctx)
        except Exception as exc:
            rows.append({"model": name, "candidate": cand.name, "error": str(exc).splitlines()[0][:120]})
            continue
        build_s = time.perf_counter() - t0
        runner = OrtRunner(built.path, threads=built.settings.threads or threads,
                           optimization=built.settings.optimization or "all")
        got = runner.run(feed)
        fp32 = measure(lambda: base.run(feed), repeats=200, max_seconds=8)
        lat = measure(lambda r=runner: r.run(feed), repeats=200, max_seconds=8)
        a, b = next(iter(got.values())).reshape(-1), next(iter(want.values())).reshape(-1)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        rows.append({"model": name, "candidate": cand.name, "build_s": build_s, "fp32_p50": fp32.p50,
                     "p50": lat.p50, "speedup": fp32.p50 / lat.p50, "cosine": cos,
                     "argmax_same": bool(a.argmax() == b.argmax())})
        print(rows[-1], flush=True)
    return rows


def shipped(name: str) -> dict:
    """Run the real flow (embedded Prefect, no TVM) and report what the gate published."""
    work = ROOT / "benchmarks" / "work" / "compression"
    env = {**os.environ, "KILN_HOME": str(work / "home"), "KILN_STORE": str(work / "store"),
           "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([str(Path(sys.executable).parent / "kiln"), "optimize", str(ROOT / "examples" / name),
                           "--candidates", "onnxruntime,ort-fp32-basic,ort-int8-dynamic,ort-int8-static", "--json"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"model": name, "error": proc.stderr.strip().splitlines()[-1][:200]}
    m = json.loads(proc.stdout)
    print(name, "ships", m["selected"], f"{m['speedup_vs_baseline']:.2f}x", flush=True)
    return {"model": name, "selected": m["selected"], "speedup": m["speedup_vs_baseline"],
            "passed": [c["name"] for c in m["candidates"] if c["passed"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--calibration", type=int, default=16, help="synthetic calibration feeds")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    rows = [r for m in args.models for r in bench(m, args.calibration, args.threads)]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpu": cpu, "cores": os.cpu_count()},
              "onnxruntime": __import__("onnxruntime").__version__, "threads": args.threads,
              "calibration": args.calibration, "command": " ".join(["python benchmarks/compression.py", *sys.argv[1:]]),
              "rows": rows, "shipped": [shipped(m) for m in args.models]}
    (ROOT / "benchmarks" / "compression.json").write_text(json.dumps(result, indent=1) + "\n")
    report.rewrite()


if __name__ == "__main__":
    main()
