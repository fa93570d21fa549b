"""The traffic users send: real sentences at their own lengths, through `kiln optimize` with no --shape and no
--dim, and the published artifact timed by this script itself on every sentence at its own length, interleaved
with what a user runs without kiln: onnxruntime fp32 on the original model, same 2 threads (issue 24's bar
`dyn-natural-lengths`).

    python benchmarks/natural_lengths.py                       # all-MiniLM-L6-v2 and paraphrase-MiniLM-L3-v2
    python benchmarks/natural_lengths.py --models minilm-l6

160 samples per model: 120 of pyjokes' English sentences and 40 sentence pairs, tokenized with the model's own
tokenizer without padding (truncated at 128), written as real.parquet with one list column per model input, the
way `datasets.Dataset.to_parquet` writes a tokenizer's output. The command is the bar's:
`kiln optimize model.onnx --data real.parquet --range 'cosine>=0.99' --name NAME --trials 0 --json`.
The ratio is onnxruntime's mean latency over kiln's, both over every sentence, in alternating rounds; the
accuracy is each sentence's mean-pooled embedding against fp32's. Writes benchmarks/natural_lengths.json and,
through benchmarks/report.py, its tables in RESULTS.md and README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "work" / "natural"
MODELS = {"minilm-l6": "all-MiniLM-L6-v2 (6 layers, hidden 384), Optimum export",
          "minilm-l3": "paraphrase-MiniLM-L3-v2 (3 layers, hidden 384), shipped ONNX"}
SINGLES, PAIRS, TRUNCATE = 120, 40, 128
THREADS = 2
ROUNDS = 7


def texts() -> list[str | tuple[str, str]]:
    """120 sentences and 40 pairs of the next 80, in that order."""
    from benchmarks.real_models_prepare import sentences

    found = sentences(ROOT / "examples" / "minilm" / "downloads")
    pairs = found[SINGLES : SINGLES + 2 * PAIRS]
    return [*found[:SINGLES], *zip(pairs[::2], pairs[1::2], strict=True)]


def tokenizer(name: str, models: Path):
    from tokenizers import Tokenizer

    if name == "minilm-l6":
        tok = Tokenizer.from_file(str(models / name / "tokenizer.json"))
    else:
        from benchmarks.real_models_prepare import EXAMPLE

        tok = Tokenizer.from_str(EXAMPLE.tokenizer_json().decode())
    tok.no_padding()  # the checkpoint's tokenizer.json pads to 128 by default
    tok.enable_truncation(TRUNCATE)
    return tok


def write_parquet(name: str, models: Path, inputs: list[str], folder: Path) -> tuple[Path, list[int]]:
    import pandas as pd

    tok = tokenizer(name, models)
    rows, lengths = [], []
    for text in texts():
        enc = tok.encode(*text) if isinstance(text, tuple) else tok.encode(text)
        row = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        rows.append({k: v for k, v in row.items() if k in inputs})
        lengths.append(len(enc.ids))
    path = folder / "real.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path, lengths


def optimize(name: str, model: Path, data: Path, folder: Path) -> tuple[int, dict | None, str, float]:
    """The bar's command, in a fresh KILN_HOME and store (so it publishes); (exit code, manifest, stderr, s)."""
    env = {**os.environ, "KILN_HOME": str(folder / "home"), "KILN_STORE": str(folder / "store"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    start = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "kiln"), "optimize", str(model), "--data", str(data),
                           "--range", "cosine>=0.99", "--name", f"{name}-dyn", "--trials", "0", "--json"],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else None, proc.stderr, seconds


def pooled(outputs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """The mean over real tokens of the token-level output (the one of rank 3)."""
    tokens = next(v for v in outputs.values() if np.ndim(v) == 3)
    m = mask[..., None].astype(np.float64)
    return (tokens * m).sum(1)[0] / m.sum()


def measure(model: Path, artifact: Path, feeds: list[dict[str, np.ndarray]]) -> dict:
    """Every sentence through both, alternating which goes first each round; accuracy from the first round."""
    import onnxruntime as ort

    import kiln

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fp32 = lambda f: dict(zip(names, session.run(names, f), strict=True))  # noqa: E731
    predictor = kiln.load(artifact, threads=THREADS)
    cosines = []
    for f in feeds:
        a, b = pooled(predictor.run(f), f["attention_mask"]), pooled(fp32(f), f["attention_mask"])
        cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    times: dict[str, list[list[float]]] = {"kiln": [], "onnxruntime": []}
    runs = {"kiln": predictor.run, "onnxruntime": fp32}
    for r in range(ROUNDS):
        for who in (("kiln", "onnxruntime") if r % 2 == 0 else ("onnxruntime", "kiln")):
            got = []
            for f in feeds:
                t0 = time.perf_counter_ns()
                runs[who](f)
                got.append((time.perf_counter_ns() - t0) / 1e6)
            times[who].append(got)
    checks = {}
    for length in (3, 37, 600):
        feed = {k: np.ones((1, length), np.int64) * (101 if k == "input_ids" else 1 if k == "attention_mask" else 0)
                for k in feeds[0]}
        try:
            checks[str(length)] = f"runs: {list(predictor.run(feed).values())[0].shape}"
        except kiln.InputError as exc:
            checks[str(length)] = f"refused: {exc.message}"
    predictor.close()
    return {"cosines": cosines, "times": times, "checks": checks}


def summarize(name: str, lengths: list[int], code: int, manifest: dict | None, stderr: str, seconds: float,
              measured: dict | None) -> dict:
    out = {"model": name, "what": MODELS[name], "samples": len(lengths), "median_tokens": float(np.median(lengths)),
           "mean_tokens": round(float(np.mean(lengths)), 1), "max_tokens": int(max(lengths)), "exit_code": code,
           "optimize_seconds": round(seconds)}
    if manifest is None:
        out["error"] = stderr[-1500:]
        return out
    out.update(selected=manifest["selected"], kiln_speedup=manifest["speedup_vs_baseline"],
               profile=", ".join(f"{d['name']} {d['low']}" + (f"..{d['high']}" if d['high'] != d['low'] else "")
                                 + f" ({d['source']})" for d in manifest["profile"]["dims"]),
               timing=manifest["timing"])
    if measured:
        ort_ms = np.array(measured["times"]["onnxruntime"])  # rounds x sentences
        kiln_ms = np.array(measured["times"]["kiln"])
        per_round = ort_ms.mean(1) / kiln_ms.mean(1)
        buckets: dict[str, list[int]] = {}
        for i, n in enumerate(lengths):
            high = 1 << int(np.ceil(np.log2(max(n, 2))))
            buckets.setdefault(f"{high // 2 + 1}-{high}", []).append(i)
        out.update(ratio=round(float(ort_ms.mean() / kiln_ms.mean()), 3),
                   ratio_rounds=[round(float(x), 3) for x in per_round],
                   kiln_mean_ms=round(float(kiln_ms.mean()), 3), ort_mean_ms=round(float(ort_ms.mean()), 3),
                   min_pooled_cosine=round(min(measured["cosines"]), 5),
                   mean_pooled_cosine=round(float(np.mean(measured["cosines"])), 5),
                   buckets=[{"tokens": b, "share": round(len(ix) / len(lengths), 3),
                             "kiln_p50_ms": round(float(np.median(kiln_ms[:, ix])), 3),
                             "ort_p50_ms": round(float(np.median(ort_ms[:, ix])), 3)}
                            for b, ix in sorted(buckets.items(), key=lambda kv: int(kv[0].split("-")[0]))],
                   checks=measured["checks"])
    return out


def run(name: str, models: Path) -> dict:
    import onnx

    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model = models / name / "model.onnx"
    inputs = [i.name for i in onnx.load(str(model), load_external_data=False).graph.input]
    data, lengths = write_parquet(name, models, inputs, folder)
    print(f"{name}: {len(lengths)} samples, median {np.median(lengths):.0f} tokens, max {max(lengths)}", flush=True)
    code, manifest, stderr, seconds = optimize(name, model, data, folder)
    print(f"{name}: kiln optimize exited {code} in {seconds:.0f} s"
          + (f", published {manifest['selected']}" if manifest else f"\n{stderr[-2000:]}"), flush=True)
    measured = None
    if manifest:
        import pandas as pd

        frame = pd.read_parquet(data)
        feeds = [{k: np.asarray(frame[k][i], np.int64)[None] for k in inputs} for i in range(len(frame))]
        measured = measure(model, folder / "store" / f"{name}-dyn" / manifest["id"], feeds)
    result = summarize(name, lengths, code, manifest, stderr, seconds, measured)
    print(json.dumps({k: v for k, v in result.items() if k not in ("buckets", "ratio_rounds")}, indent=1), flush=True)
    return result


def main() -> None:
    from benchmarks import report
    from benchmarks.compile_vs_ort import machine
    from benchmarks.real_models import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    models = prepare(args.models)
    results = [run(name, models) for name in args.models]
    info = machine()
    saved = ROOT / "benchmarks" / "natural_lengths.json"
    if saved.is_file():  # models not run this time keep their results, when they came from the same CPU
        before = json.loads(saved.read_text())
        if before.get("cpu") == info["cpu"]:
            results = [r for r in before["results"] if r["model"] not in args.models] + results
    results.sort(key=lambda r: list(MODELS).index(r["model"]))
    import onnxruntime

    saved.write_text(json.dumps({"cpu": info["cpu"], "cores": info["cores"], "date": time.strftime("%Y-%m-%d"),
                                 "onnxruntime": onnxruntime.__version__, "threads": THREADS, "rounds": ROUNDS,
                                 "results": results}, indent=1) + "\n")
    report.rewrite()


if __name__ == "__main__":
    main()
