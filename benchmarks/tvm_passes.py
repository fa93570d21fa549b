"""kiln's compiler settings measured on and off: graph passes, pre-packed weights, fast math, cold-cache trials.

    python benchmarks/tvm_passes.py                                  # encoder and MiniLM-L6, 10 minutes each
    python benchmarks/tvm_passes.py --models encoder --minutes 3     # a short look
    python benchmarks/tvm_passes.py --variants "kiln default" "+ combine-parallel-matmul"
    python benchmarks/tvm_passes.py --models minilm-l6-int8 --minutes 5    # kiln's int8 compiler's passes

Each variant is a full kiln compile with the same wall-clock tuning budget. A variant that changes how every
kernel is built or timed (pre-packing, cold-cache trials) has its own tuning database. The graph-pass variants
(kiln default, + combine-parallel-matmul, + fast-math) are paired, as kiln's tvm and tvm-fast-math candidates
are: they tune in turn into one database and are all rebuilt from it at the end, so the kernels they share are
the same records and only the kernels a pass changed differ (two separate tunings of one pipeline differed by
15 % at 10 minutes, more than a pass like Q/K/V combining can gain). Then all are timed in interleaved rounds
beside fp32 onnxruntime in one process, and the first variant (what kiln ships by default) is profiled call by call
(benchmarks/vm_profile.py) to show what lies between the kernels and the end-to-end time. minilm-l6-int8 is
what kiln's int8 compiler builds for all-MiniLM-L6-v2 (tvm-int8-smooth: onnxruntime's SmoothQuant int8 model,
calibrated on 8 real sentences) at seq 32, the middle of its real sentences' length buckets, fed a real
sentence; its variants are the passes that apply to int8 graphs only. Writes
benchmarks/tvm_passes.json, and through benchmarks/report.py the figures of RESULTS.md and README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.compile_vs_ort import CONSOLE, feed_for, machine  # noqa: E402
from benchmarks.tuning_curve import CURVE_MODELS, REAL  # noqa: E402
from benchmarks.vm_profile import profile  # noqa: E402
from kiln.compiler import Limits, compile_model  # noqa: E402
from kiln.compiler.int8.intrinsics import for_cpu  # noqa: E402
from kiln.compiler.passes import DEFAULT, NotApplicable  # noqa: E402
from kiln.cpu import detected_int8_isa  # noqa: E402
from kiln.optimize.candidates import BuildContext, get  # noqa: E402
from kiln.optimize.inspect import input_specs, load_model, output_specs  # noqa: E402
from kiln.optimize.prepare import prepare_model  # noqa: E402
from kiln.runtime.latency import interleaved  # noqa: E402
from kiln.runtime.runners import OrtRunner, TvmRunner  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "passes"
# (graph passes, Limits settings besides pre-packed weights, paired); the first is kiln's default. "no graph
# passes" has its own database: where no exact pass applies (the encoder), it is the default pipeline tuned a
# second time, the noise between tunings.
VARIANTS = {
    "kiln default": (DEFAULT, {}, True),
    "no graph passes": ((), {}, False),
    "no pre-packing": (DEFAULT, {"prepack": False}, False),
    "+ combine-parallel-matmul": ((*DEFAULT, "combine-parallel-matmul"), {}, True),
    "+ fused-attention": ((*DEFAULT, "fused-attention"), {}, True),
    "+ fast-math": ((*DEFAULT, "fast-math"), {}, True),
    "without fuse-norm-quantize": (tuple(p for p in DEFAULT if p != "fuse-norm-quantize"), {}, True),
    "without fuse-dynamic-quantize": (tuple(p for p in DEFAULT if p != "fuse-dynamic-quantize"), {}, True),
    "cold-cache trials": (DEFAULT, {"cache_flush": True}, False),
    # kiln before 2026-11-27: onnxruntime's MatMul+Add -> Gemm (2-D, wrapped in reshapes) kept in the prepared model
    "Gemm in the prepared model": (DEFAULT, {"ort_disabled": ()}, False),
}
MODEL_VARIANTS = {"encoder": [v for v in VARIANTS if not v.startswith("without")],  # fp32: int8 passes do nothing
                  "minilm-l6": ["kiln default", "+ fused-attention", "+ combine-parallel-matmul", "+ fast-math",
                                "cold-cache trials",
                                "Gemm in the prepared model"],
                  "minilm-l6-int8": ["kiln default", "without fuse-norm-quantize", "without fuse-dynamic-quantize"]}
INT8_MODELS = {"minilm-l6-int8": ("minilm-l6", "ort-int8-smooth", 32)}  # (fp32 model, int8 candidate, seq)


def _load(name: str):
    """(the fp32 model onnxruntime runs, its ModelProto, inputs, outputs, a feed, the int8 candidate and seq
    length TVM compiles from, or None)."""
    fp32, int8, seq = INT8_MODELS.get(name, (name, None, None))
    rel, script, shapes = CURVE_MODELS[fp32]
    path = Path(rel) if Path(rel).is_absolute() else ROOT / rel
    if not path.is_file():
        if script is None:
            raise SystemExit(f"{path} is missing: run `python benchmarks/real_models.py --models {fp32}` first")
        import subprocess

        subprocess.run([sys.executable, str(ROOT / script)], check=True)
    model = load_model(path)
    if seq:
        shapes = {k: [1, seq] for k in shapes}
    inputs = input_specs(model, shapes, rel)
    feed = feed_for(inputs)
    calibration = [feed_for(inputs, seed=i) for i in range(8)]
    if fp32 == "minilm-l6":  # real sentences; at seq 32 the first that fits, cut to it (padding after its end)
        data = np.load(REAL / fp32 / "samples.npz")
        width = seq or 128
        first = next(i for i, m in enumerate(data["attention_mask"]) if m.sum() <= width)
        feed = {s.name: data[s.name][first][:, :width] for s in inputs}
        calibration = [{s.name: data[s.name][i][:, :width] for s in inputs} for i in range(8)]
    return path, model, inputs, output_specs(model), feed, (int8, calibration) if int8 else None


def bench(name: str, minutes: float, threads: int, per_round: int, variants: list[str] | None = None) -> dict:
    path, model, inputs, outputs, feed, int8 = _load(name)
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prepared = work / "prepared.onnx"
    prepare_model(model, inputs, prepared, str(path))
    intrinsic = None
    if int8:  # TVM compiles the quantized model onnxruntime runs as that candidate, with kiln's int8 kernels
        source, calibration = int8
        quantized = get(source).build(BuildContext(model=path, prepared=prepared, out_dir=work,
                                                   calibration=calibration))
        prepared = work / "prepared-int8.onnx"
        prepare_model(load_model(Path(quantized.path)), inputs, prepared, quantized.path)
        intrinsic = for_cpu(detected_int8_isa())
    built, tuned = {}, {}
    for label in [v for v in MODEL_VARIANTS[name] if not variants or v in variants]:
        graph_passes, settings, paired = VARIANTS[label]
        slug = label.replace(" ", "-").replace("+", "plus")
        source = prepared
        if "ort_disabled" in settings:  # prepared another way
            settings = dict(settings)
            source = work / slug / "prepared.onnx"
            prepare_model(model, inputs, source, str(path), ort_disabled=settings.pop("ort_disabled"))
        try:
            res = compile_model(source, inputs, target="host", db_dir=work / ("paired" if paired else slug)
                                / "db", out=work / slug / "model.so", graph_passes=graph_passes,
                                limits=Limits(trials=100_000, seconds=minutes * 60, trials_per_round=per_round,
                                              threads=threads, int8=intrinsic, **{"prepack": True, **settings}),
                                progress=lambda p, lb=label: print(f"\r[{name}] {lb}: {p.describe()}", end="",
                                                                   file=CONSOLE))
        except NotApplicable as exc:
            print(f"\n[{name}] {label}: {exc.message}", file=CONSOLE)
            continue
        print(f"\n[{name}] {label}: {res.tuning.describe()}; passes {res.passes}", file=CONSOLE)
        built[label] = tuned[label] = res
    for label in [v for v in built if VARIANTS[v][2]]:  # paired: each rebuilt from the database they all added to
        slug = label.replace(" ", "-").replace("+", "plus")
        built[label] = compile_model(prepared, inputs, target="host", db_dir=work / "paired" / "db",
                                     out=work / slug / "final.so", graph_passes=VARIANTS[label][0],
                                     limits=Limits(trials=0, prepack=True, threads=threads, int8=intrinsic))
    runners = {label: TvmRunner(r.module, inputs, outputs, threads=threads) for label, r in built.items()}
    ort = OrtRunner(path, threads=threads)
    want = ort.run(feed)[outputs[0].name]
    calls = {"onnxruntime": lambda: ort.run(feed),
             **{label: (lambda r=r: r.run(feed)) for label, r in runners.items()}}
    rounds = interleaved(calls, repeats=300, max_seconds=10)
    base = rounds["onnxruntime"].summary()
    rows = []
    for label, res in built.items():
        s = rounds[label].summary()
        got = runners[label].run(feed)[outputs[0].name]
        rows.append({"variant": label, "passes": res.passes, "trials": tuned[label].tuning.trials,
                     "failed": tuned[label].tuning.failed, "tasks": len(res.tuning.tasks),
                     "paired": VARIANTS[label][2], "estimated_ms": res.tuning.estimated_ms, "p50_ms": s["p50"],
                     "over_ort": float(np.median(np.asarray(s["rounds"]) / np.asarray(base["rounds"]))),
                     "max_abs_diff": float(np.max(np.abs(got - want)))})
        runners[label].close()
    first = built.get("kiln default") or next(iter(built.values()))  # the profile is of what kiln ships
    prof = profile(first.module, [np.asarray(feed[s.name]) for s in inputs], runs=50, threads=threads)
    ort.close()
    return {"model": name, "minutes": minutes, "ort_p50_ms": base["p50"], "rows": rows,
            "profile": {**{k: prof[k] for k in ("e2e_ms", "hooked_ms", "sum_ms")},
                        "top": [[s, round(us, 1), n] for s, (us, n) in list(prof["calls"].items())[:15]],
                        "estimated_ms": first.tuning.estimated_ms}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_VARIANTS), choices=list(MODEL_VARIANTS))
    parser.add_argument("--minutes", type=float, default=10.0, help="tuning time per variant")
    parser.add_argument("--per-round", type=int, default=32, help="trials per task in each evolutionary round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="a subset (default: each model's)")
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    info = machine()
    command = shlex.join(["python", "benchmarks/tvm_passes.py", *sys.argv[1:]])  # variant names hold spaces
    today = time.strftime("%Y-%m-%d")
    results = [{**bench(m, args.minutes, threads, args.per_round, args.variants), "date": today, "command": command}
               for m in args.models]
    out = ROOT / "benchmarks" / "tvm_passes.json"
    kept = []  # the other models' rows, where they were measured on this CPU (ratios are per machine)
    if out.is_file():
        old = json.loads(out.read_text())
        if old.get("machine") == info and old.get("threads") == threads:
            kept = [{"date": old["date"], "command": old["command"], **r} for r in old["results"]
                    if r["model"] not in args.models]
    out.write_text(json.dumps({"date": today, "machine": info, "threads": threads, "command": command,
                               "results": kept + results}, indent=1))
    report.rewrite()


if __name__ == "__main__":
    main()
