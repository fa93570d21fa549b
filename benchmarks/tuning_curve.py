"""The anytime curve: how long must TVM tune on this machine before it pays off against onnxruntime?

    python benchmarks/tuning_curve.py                                   # make bench-long: 0..120 minutes
    python benchmarks/tuning_curve.py --models encoder --minutes 0 1 3  # a short look
    python benchmarks/tuning_curve.py --models resnet18 resnet34 --shared   # the second starts from the first
    python benchmarks/tuning_curve.py --models resnet18 resnet34 --shared --later-minutes 0 5 15 30
    python benchmarks/tuning_curve.py --models encoder --fast-math      # the tvm-fast-math candidate's pipeline
    python benchmarks/tuning_curve.py --models encoder minilm-l6 --int8 --minutes 0 5 15 30   # kiln's int8 kernels

One search per model, continued from its own database (each curve starts from nothing; with --shared the
models, in the order given, share one CPU database as kiln's runs do, so a later model starts from the
kernels an earlier one tuned):
at each checkpoint the best records so far are compiled, and the compiled model is timed in interleaved rounds
beside fp32 onnxruntime and onnxruntime int8 (the kind kiln would ship: static QDQ for the CNN, per-channel
dynamic for transformers), in the same process. With --int8 the search is kiln's own int8 compiler's (what
tvm-int8-dynamic / -smooth / -static build): onnxruntime's int8 model (INT8_SOURCE, the quantization the TVM int8
candidate compiles) lowered to kiln's integer kernels around this CPU's int8 intrinsic, and each row also has
tvm_over_int8, the TVM int8 build over onnxruntime running that same quantized model. The ratio is the median
of per-round ratios (TVM / onnxruntime, below 1 = TVM faster). Writes benchmarks/tuning_curve.json and
benchmarks/tuning_curve.svg (with --int8: tuning_curve_int8.json/.svg, so fp32 curves of another CPU stay)
after every checkpoint, so a run stopped early keeps the checkpoints it reached, and through
benchmarks/report.py the figures of RESULTS.md and README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.compile_vs_ort import CONSOLE, MODELS, feed_for, machine  # noqa: E402
from kiln.compiler import Limits, compile_model  # noqa: E402
from kiln.compiler.passes import DEFAULT  # noqa: E402
from kiln.optimize.candidates import BuildContext, get  # noqa: E402
from kiln.optimize.inspect import input_specs, load_model, output_specs  # noqa: E402
from kiln.optimize.prepare import prepare_model  # noqa: E402
from kiln.runtime.latency import interleaved  # noqa: E402
from kiln.runtime.runners import OrtRunner, TvmRunner  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "curve"
REAL = ROOT / "benchmarks" / "work" / "real" / "models"
CURVE_MODELS = {**{k: MODELS[k] for k in ("resnet18", "encoder")},
                "resnet34": (str(WORK / "resnet34.onnx"), f"examples/resnet18/make_model.py --depth 34 --out "
                             f"{WORK / 'resnet34.onnx'}", {"input": [1, 3, 224, 224]}),
                "minilm-l6": (str(REAL / "minilm-l6" / "model.onnx"), None,
                              {"input_ids": [1, 128], "attention_mask": [1, 128]})}
INT8 = {"resnet18": "ort-int8-static", "resnet34": "ort-int8-static", "encoder": "ort-int8-dynamic",
        "minilm-l6": "ort-int8-fused-dynamic"}
# --int8: the onnxruntime int8 candidate whose model the TVM int8 candidate compiles (the fused graph's QAttention
# and DynamicQuantizeMatMul are onnxruntime contrib ops no TVM frontend imports; MiniLM's per-tensor dynamic int8
# misses cosine 0.99, its SmoothQuant one does not)
INT8_SOURCE = {**INT8, "minilm-l6": "ort-int8-smooth"}


def _paired_ratio(a: list[float], b: list[float]) -> float:
    return float(np.median(np.asarray(a) / np.asarray(b)))


def curve(name: str, minutes: list[float], threads: int, shared: Path | None = None, fast_math: bool = False,
          on_row: Callable[[dict], None] = lambda partial: None, int8_kernels: str | None = None) -> dict:
    """One model's curve; on_row gets the curve so far after each checkpoint (a long run keeps what it did).
    int8_kernels: an int8 intrinsic (kiln.compiler.int8.intrinsics): tune onnxruntime's int8 model with it."""
    rel, script, shapes = CURVE_MODELS[name]
    path = Path(rel) if Path(rel).is_absolute() else ROOT / rel
    if not path.is_file():
        if script is None:
            raise SystemExit(f"{path} is missing: run `python benchmarks/real_models.py --models {name}` first")
        import subprocess

        path.parent.mkdir(parents=True, exist_ok=True)
        command, *args = script.split()
        subprocess.run([sys.executable, str(ROOT / command), *args], check=True)
    model = load_model(path)
    inputs, outputs = input_specs(model, shapes, rel), output_specs(model)
    label = name + ("+fast-math" if fast_math else "") + (f"+int8-{int8_kernels}" if int8_kernels else "")
    work = WORK / label
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prepared = work / "prepared.onnx"
    prepare_model(model, inputs, prepared, rel)
    feed = feed_for(inputs)
    if name == "minilm-l6":
        data = np.load(REAL / name / "samples.npz")
        feed = {s.name: data[s.name][0] for s in inputs}
    calibration = [feed_for(inputs, seed=i) for i in range(8)]
    if name == "minilm-l6":  # real sentences (SmoothQuant's channel ranges come from them)
        calibration = [{s.name: data[s.name][i] for s in inputs} for i in range(8)]
    graph_passes = (*DEFAULT, "fast-math") if fast_math else DEFAULT
    source = (INT8_SOURCE if int8_kernels else INT8)[name]
    int8 = get(source).build(BuildContext(model=path, prepared=prepared, out_dir=work, calibration=calibration))
    if int8_kernels:  # TVM compiles the quantized model onnxruntime runs beside it
        prepared = work / "prepared-int8.onnx"
        prepare_model(load_model(Path(int8.path)), inputs, prepared, int8.path)
    ort, ort8 = OrtRunner(path, threads=threads), OrtRunner(int8.path, threads=threads)
    rows, spent = [], 0.0
    for checkpoint in minutes:
        segment = (checkpoint - spent) * 60
        start = time.perf_counter()
        res = compile_model(prepared, inputs, target="host", db_dir=work / "db", out=work / f"tvm-{checkpoint}.so",
                            limits=Limits(trials=100_000 if segment > 0 else 0, seconds=segment or None,
                                          prepack=True, threads=threads, int8=int8_kernels), shared_root=shared,
                            graph_passes=graph_passes,
                            progress=lambda p, at=checkpoint: print(f"\r[{label}] {at} min: {p.describe()}", end="",
                                                                    file=CONSOLE))
        spent = checkpoint
        tvm = TvmRunner(res.module, inputs, outputs, threads=threads)
        rounds = interleaved({"tvm": lambda r=tvm: r.run(feed), "ort": lambda: ort.run(feed),
                              "int8": lambda: ort8.run(feed)}, repeats=300, max_seconds=10)
        t, o, q = (rounds[k].summary() for k in ("tvm", "ort", "int8"))
        row = {"minutes": checkpoint, "trials": res.tuning.trials, "failed_trials": res.tuning.failed,
               "tuning_s": round(time.perf_counter() - start, 1), "estimated_ms": res.tuning.estimated_ms,
               "tvm_p50_ms": t["p50"], "ort_p50_ms": o["p50"], "int8_p50_ms": q["p50"],
               "tvm_over_ort": _paired_ratio(t["rounds"], o["rounds"]),
               "int8_over_ort": _paired_ratio(q["rounds"], o["rounds"]), "pipeline": res.passes}
        if int8_kernels:
            row["tvm_over_int8"] = _paired_ratio(t["rounds"], q["rounds"])
        rows.append(row)
        on_row(_result(label, name, shared, inputs, rows, source))
        print(f"\r[{label}] {checkpoint} min: TVM {t['p50']:.3f} ms, onnxruntime {o['p50']:.3f} ms, int8 "
              f"{q['p50']:.3f} ms: TVM/ORT {row['tvm_over_ort']:.2f} ({res.tuning.trials} trials, "
              f"{res.tuning.failed} failed)", file=CONSOLE)
        tvm.close()
    ort.close()
    ort8.close()
    return _result(label, name, shared, inputs, rows, source)


def _result(label: str, name: str, shared: Path | None, inputs, rows: list[dict], source: str) -> dict:
    return {"model": label, "int8": source, "shared": shared is not None,
            "shapes": {s.name: s.shape for s in inputs}, "rows": list(rows)}


def svg(results: list[dict]) -> str:
    """TVM / onnxruntime against minutes of tuning, one line per model (int8 / onnxruntime dashed). The y axis
    is logarithmic: an untuned build is ~100x slower and a tuned one within 0.5-2x, both must be readable."""
    import math

    w, h, pad = 640, 360, 50
    xs = [r["minutes"] for m in results for r in m["rows"]] or [1]
    ys = [v for m in results for r in m["rows"] for v in (r["tvm_over_ort"], r["int8_over_ort"])] + [1.0]
    x_max = max(xs) or 1
    ticks = [t for t in (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if min(ys) / 2 <= t <= max(ys) * 2]
    lo, hi = math.log10(min(ticks[0], min(ys))), math.log10(max(ticks[-1], max(ys)))

    def pt(x, y):
        return f"{pad + (w - 2 * pad) * x / x_max:.1f},{h - pad - (h - 2 * pad) * (math.log10(y) - lo) / (hi - lo):.1f}"

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             'font-size="12">', '<rect width="100%" height="100%" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<polyline points="{pt(0, 1)} {pt(x_max, 1)}" stroke="gray" stroke-dasharray="2,3" fill="none"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">minutes of tuning</text>',
             f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
             'time / fp32 onnxruntime (log scale)</text>']
    for tick in sorted({r["minutes"] for m in results for r in m["rows"]}):
        x, y = pt(tick, 10 ** lo).split(",")
        parts.append(f'<text x="{x}" y="{float(y) + 15}" text-anchor="middle">{tick:g}</text>')
    for tick in ticks:
        x, y = pt(0, tick).split(",")
        parts.append(f'<text x="{float(x) - 6}" y="{float(y) + 4}" text-anchor="end">{tick:g}x</text>')
    for i, m in enumerate(results):
        c = colors[i % len(colors)]
        tvm = " ".join(pt(r["minutes"], r["tvm_over_ort"]) for r in m["rows"])
        q = " ".join(pt(r["minutes"], r["int8_over_ort"]) for r in m["rows"])
        parts += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3" fill="{c}"/>' for p in tvm.split()]
        parts += [f'<polyline points="{tvm}" stroke="{c}" stroke-width="2" fill="none"/>',
                  f'<polyline points="{q}" stroke="{c}" stroke-dasharray="5,4" fill="none"/>',
                  f'<text x="{w - 10}" y="{pad + 16 * i}" fill="{c}" text-anchor="end">{m["model"]}: TVM '
                  f'(solid), {m["int8"]} (dashed)</text>']
    return "\n".join(parts + ["</svg>"]) + "\n"


def write(results: list[dict], info: dict, threads: int, stem: str = "tuning_curve", dated: dict | None = None) -> None:
    """STEM.json and the plot from every model's curve; report.py writes the figures from the JSON. `dated`: the
    date (and its source) the JSON keeps, today's by default."""
    out = ROOT / "benchmarks" / f"{stem}.json"
    dated = dated or {"date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({**dated, "machine": info, "threads": threads, "results": results}, indent=1))
    (ROOT / "benchmarks" / f"{stem}.svg").write_text(svg(results))
    report.rewrite()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CURVE_MODELS), choices=list(CURVE_MODELS))
    parser.add_argument("--minutes", nargs="+", type=float, default=[0, 5, 15, 30, 60, 120])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shared", action="store_true", help="the models share one tuning database, in order")
    parser.add_argument("--fast-math", action="store_true", help="the tvm-fast-math candidate's graph passes")
    parser.add_argument("--later-minutes", nargs="+", type=float, default=None,
                        help="with --shared: checkpoints of the models after the first (they start from its kernels)")
    parser.add_argument("--keep-shared", action="store_true",
                        help="with --shared: start from the shared database an earlier run left (e.g. ResNet-34 "
                             "after a ResNet-18 curve) instead of an empty one")
    parser.add_argument("--int8", action="store_true",
                        help="kiln's int8 compiler: tune onnxruntime's int8 model with this CPU's exact int8 kernels")
    parser.add_argument("--replot", action="store_true", help="redraw the plot and figures from tuning_curve.json")
    args = parser.parse_args()
    import os

    threads = args.threads or os.cpu_count() or 1
    stem = "tuning_curve_int8" if args.int8 else "tuning_curve"
    out = ROOT / "benchmarks" / f"{stem}.json"
    earlier = json.loads(out.read_text()) if out.is_file() else {}
    if args.replot:  # the plot and the figures again from tuning_curve.json, no tuning
        if not earlier:
            raise SystemExit(f"nothing to redraw: {out} is missing (run a curve first)")
        return write(earlier["results"], earlier["machine"], earlier.get("threads", threads), stem,
                     {k: earlier[k] for k in ("date", "date_source") if k in earlier})
    info = machine()
    shared = WORK / "shared" if args.shared else None
    if shared and not args.keep_shared:
        shutil.rmtree(shared, ignore_errors=True)
    command = "python benchmarks/tuning_curve.py " + " ".join(sys.argv[1:])
    int8_kernels = None
    if args.int8:
        from kiln.compiler.int8.intrinsics import for_cpu
        from kiln.cpu import detected_int8_isa

        int8_kernels = for_cpu(detected_int8_isa())

    def save(result: dict) -> None:
        """One curve per model: a later run on the same CPU replaces its models' curves and keeps the others."""
        earlier = json.loads(out.read_text()) if out.is_file() else {}
        kept = earlier.get("results", []) if earlier.get("machine", {}).get("llvm_mcpu") == info["llvm_mcpu"] else []
        write([r for r in kept if r["model"] != result["model"]]
              + [{**result, "command": command, "date": time.strftime("%Y-%m-%d")}], info, threads, stem)

    for i, m in enumerate(args.models):
        later = shared and (i or args.keep_shared) and args.later_minutes
        curve(m, sorted(args.later_minutes if later else args.minutes), threads,
              shared, args.fast_math, on_row=save, int8_kernels=int8_kernels)


if __name__ == "__main__":
    main()
