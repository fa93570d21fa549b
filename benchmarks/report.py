"""Every figure in README.md and benchmarks/RESULTS.md, written from the JSON the benchmark scripts saved.

    python benchmarks/report.py                 # rewrite every generated block in place
    python benchmarks/report.py --check         # exit 1 naming each block that differs from its JSON
    python benchmarks/report.py --check --root DIR   # the same on a copy (DIR/README.md, DIR/benchmarks/...)

A generated block is the text between a line `<!-- generated: NAME -->` and the next `<!-- end -->`; NAME
picks a renderer below, which reads nothing but its JSON, so every figure in the docs traces back to one
measurement and cannot drift from it unnoticed (hand-copied figures did: they outlived the runs they came from).
The prose between the blocks names no figure of its own, and `--check` also fails on a measured-looking figure
(a ratio, a time, a size, a percentage) outside the blocks, code and the SETTINGS below. Every block says when and
on which CPU its figures were measured, from its JSON: a JSON (or a row of it) without its date or CPU cannot be
rendered (`Unfit`): `--check` fails naming the block, the JSON and the rerun, and `rewrite()` leaves that block as
it was. A row with its date and CPU that is otherwise legacy (run by hand rather than by its script, or a kernel
record older than what the script records now) is stale: the block shows its figures with a caveat naming the
rerun, `--check` passes on it (the block matches its JSON), and `--strict` lists every stale row with its rerun and
exits 1. The benchmark scripts save their JSON and then call `rewrite()`; this is the one place that turns
measurements into text.

    python benchmarks/report.py --strict        # --check, and exit 1 listing every stale row and its rerun
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/RESULTS.md")
START, END = "<!-- generated: {} -->", "<!-- end -->"
BLOCK = re.compile(r"^<!-- generated: (?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- end -->$", re.M | re.S)

# what counts as a measured figure in prose: a number with the unit of a ratio, a time, a size or a share
FIGURE = re.compile(r"(?<![\w.])[~≈]?\d+(?:\.\d+)?(?:\s?-\s?\d+(?:\.\d+)?)?\s?"
                    r"(?:x|×|ns|us|µs|ms|s|sec|seconds?|min|minutes?|h|hours?|%|[KMG]i?B|GFLOP/s|(?:requests|infer)/s)"
                    r"(?![\w/])")
# settings, not measurements: they may stand in prose (each phrase exactly as the docs write it)
SETTINGS = ("90 % bootstrap interval", "`min_gain` (2 %)", "default 75 % of RAM", "5 s of calls")

Renderer = Callable[[dict], list[str]]
BLOCKS: dict[str, tuple[str, Renderer]] = {}


class Unfit(Exception):
    """A JSON the docs cannot show as it is: a JSON or row without its date or CPU."""


# the stale rows the renderer being run showed with a caveat, as `row ...: why: rerun `...`` (for --strict)
_STALE: list[str] = []


def _stale(what: str, why: str, rerun: str) -> None:
    """Note for --strict a row shown as it was recorded although its script would record it otherwise now."""
    _STALE.append(f"{what}: {why}: rerun `{rerun}`")


def _every(rows: Iterable[dict], fn: Callable[[dict], object]) -> None:
    """fn on every row; one Unfit naming every row that is, not only the first."""
    problems = []
    for r in rows:
        try:
            fn(r)
        except Unfit as exc:
            problems.append(str(exc))
    if problems:
        raise Unfit("; ".join(dict.fromkeys(problems)))


def block(name: str, source: str) -> Callable[[Renderer], Renderer]:
    """Register a renderer: block NAME is written from benchmarks/SOURCE alone."""
    def register(fn: Renderer) -> Renderer:
        BLOCKS[name] = (source, fn)
        return fn
    return register


# ---------------------------------------------------------------------------------------------------- helpers

def _where(m: dict, mcpu: bool = True, flat: bool = False, what: str = "") -> str:
    """The machine a JSON names, with what it records: `AMD EPYC (2 cores, LLVM mcpu `znver4`)`, or with commas
    (`flat`) where it already stands in parentheses. Unfit where it names no CPU (`what`: the row, for the
    message)."""
    extra = [f"{m['cores']} cores" if m.get("cores") else "", f"LLVM mcpu `{m['llvm_mcpu']}`"
             if mcpu and m.get("llvm_mcpu") else ""]
    extra = ", ".join(e for e in extra if e)
    if not m.get("cpu"):
        raise Unfit(f"{what} records no CPU" if what else "records no CPU")
    if not extra:
        return m["cpu"]
    return f"{m['cpu']}, {extra}" if flat else f"{m['cpu']} ({extra})"


def _from(d: dict, machine: dict, source: str) -> str:
    """The opening of a summary: when and where it was measured, and the JSON it comes from."""
    return f"{_on(d)} {_where(machine)}, from `benchmarks/{source}`:"


def _on(d: dict, what: str = "") -> str:
    """`Measured DATE on`; where the run saved no date and it was taken from the commit that saved the JSON
    (`date_source`), that is said. Unfit where there is no date (`what`: the row, for the message)."""
    if not d.get("date"):
        raise Unfit(f"{what} records no date" if what else "records no date")
    return f"Measured {d['date']}" + (f" ({d['date_source']})" if d.get("date_source") else "") + " on"


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _join(items: Iterable[str]) -> str:
    return "; ".join(items)


# ------------------------------------------------------------------- compile_vs_ort: results.json, results-cuda.json

def _search(run: dict) -> str:
    """What the tuner did: trials run and failed, its cost model, why it stopped."""
    if not run.get("trials_run"):
        return "-"
    return (f"{run['trials_run']} run, {run['failed_trials']} failed, "
            f"{run.get('tasks_measured', '?')}/{run['tasks']} tasks measured, {run.get('cost_model')} model, "
            f"stopped by {run.get('stopped_by')}")


def _compile_section(d: dict) -> list[str]:
    m, cuda = d["machine"], "gpu" in d["machine"]
    where = f"GPU {m['gpu']} (TVM); " if cuda else ""
    commands = list(dict.fromkeys(r.get("command", "").strip() for r in d["results"]))
    numbered = len(commands) > 1
    lines = [f"{_on(d)} {where}{_where(m)}, {m['os']}, Python {m['python']}."]
    if d.get("versions"):
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in d["versions"].items()) + ".")
    if numbered:
        lines.append("Commands (column `run`): " + "; ".join(f"({i}) `{c}`" for i, c in enumerate(commands, 1)))
    elif commands[0]:
        lines.append(f"Command: `{commands[0]}`")
    lines += ["", "Batch 1, random weights, median of up to 300 timed calls after warm-up; onnxruntime re-measured "
              "right after each TVM build in the same process with the same thread count. Ratio = TVM / "
              "onnxruntime (below 1 = TVM faster)." + (
                  " TVM runs on the GPU, timed from the host with the copies in and out; onnxruntime is its CPU "
                  "build on all cores; trials 0 = DLight's default GPU schedules." if cuda else ""), "",
              ("| run " if numbered else "") + "| model | input | onnxruntime p50 ms | trials | search | tasks | "
              "tuning+build s | TVM p50 ms | TVM p90 ms | onnxruntime p50 ms (same moment) | ratio TVM/ORT | "
              "max rel diff |", ("|---" if numbered else "") + "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        shape = "; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["shapes"].items())
        run_no = f"| {commands.index(r.get('command', '').strip()) + 1} " if numbered else ""
        for run in r["runs"]:
            lines.append(f"{run_no}| {r['model']} | {shape} | {r['ort_p50_ms']:.4f} | {run['trials']} | "
                         f"{_search(run)} | {run['tasks']} | {run['build_s']} | {run['tvm_p50_ms']:.4f} | "
                         f"{run['tvm_p90_ms']:.4f} | {run['ort_p50_ms']:.4f} | {run['ratio_tvm_over_ort']:.2f} | "
                         f"{run['max_rel_diff']:.1e} |")
    return lines


block("compile_vs_ort", "results.json")(_compile_section)
block("compile_vs_ort-cuda", "results-cuda.json")(_compile_section)


def _ratios(r: dict) -> str:
    """One model's TVM / onnxruntime ratios, untuned first, then after each budget."""
    return ", ".join(f"{_x(run['ratio_tvm_over_ort'])} " + (f"after {run['trials_run']} trials" if run.get("trials_run")
                                                           else f"after {run['trials']} trials" if run["trials"]
                                                           else "untuned") for run in r["runs"])


@block("compile_vs_ort-summary", "results.json")
def compile_summary(d: dict) -> list[str]:
    versions = ", ".join(f"{k} {d['versions'][k]}" for k in ("tvm", "onnxruntime") if k in d.get("versions", {}))
    return [f"{_from(d, d['machine'], 'results.json')} TVM / onnxruntime{f' ({versions})' if versions else ''}, "
            + _join(f"{r['model']} {_ratios(r)}" for r in d["results"]) + "."]


@block("compile_vs_ort-cuda-summary", "results-cuda.json")
def cuda_summary(d: dict) -> list[str]:
    lines = []
    for r in d["results"]:
        untuned = next((run for run in r["runs"] if not run["trials"]), None)
        for run in (run for run in r["runs"] if run["trials"]):
            start = f"{untuned['tvm_p50_ms']:.2f} ms with DLight's schedules, " if untuned else ""
            lines.append(f"- {r['model']}: {start}{run['tvm_p50_ms']:.2f} ms after {run.get('trials_run')} trials "
                         f"({run.get('tasks_measured', '?')} of {run['tasks']} tasks measured, "
                         f"{run.get('failed_trials', 0)} failed, {run['build_s']:.0f} s of tuning and build); "
                         f"onnxruntime on the CPU {run['ort_p50_ms']:.2f} ms")
    return [f"{_on(d)} GPU {d['machine']['gpu']}, host {_where(d['machine'], mcpu=False, flat=True)}, from "
            "`benchmarks/results-cuda.json`:", "", *lines]


@block("readme-cuda", "results-cuda.json")
def readme_cuda(d: dict) -> list[str]:
    return [f"{_on(d)} GPU {d['machine']['gpu']} (host: {_where(d['machine'], mcpu=False, flat=True)}), from "
            "`benchmarks/results-cuda.json`: TVM's time over onnxruntime's on the CPU, "
            + _join(f"{r['model']} {_ratios(r)}" for r in d["results"]) + "."]


# ------------------------------------------------------------------------------------------ serve.json

@block("serve", "serve.json")
def serve(d: dict) -> list[str]:
    lines = [f"{_on(d)} {_where(d['machine'])}, loopback, Python clients in one process (threads). "
             f"Command: `{d['command'].strip()}`", "",
             "Latency in microseconds. Added = gRPC p50 - in-process p50; echo = a bare grpcio server returning "
             "the same request bytes (the floor of any gRPC server in Python), measured in rounds alternating "
             "with kiln's (median of 5 rounds).", "",
             "| model | backend | request bytes | in-process p50 / p99 | gRPC p50 / p99 | added | echo p50 / p99 | "
             "added / echo |", "|---|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        lines.append(f"| {r['model']} | {r['backend']} | {r['request_bytes']} | {r['inprocess_us'][0]:.0f} / "
                     f"{r['inprocess_us'][1]:.0f} | {r['grpc'][0]:.0f} / {r['grpc'][1]:.0f} | {r['added_us']:.0f} | "
                     f"{r['echo_us'][0]:.0f} / {r['echo_us'][1]:.0f} | {_x(r['added_vs_echo'])} |")
    lines += ["", "Throughput (requests/s) by concurrent clients; workers = runtime instances in the server "
              "(1: calls take turns on one instance, like a lock; 2: one instance per worker).", "",
              "| model | workers | 1 client | 4 clients | 16 clients |", "|---|---|---|---|---|"]
    for r in d["results"]:
        for w, t in r["throughput"].items():
            lines.append(f"| {r['model']} | {w} | {t['1']:.0f} | {t['4']:.0f} | {t['16']:.0f} |")
    version = f" {d['perf_analyzer']}" if d.get("perf_analyzer") else ""
    lines += ["", f"NVIDIA perf_analyzer{version} (`-i grpc --concurrency-range 1:8 --measurement-interval 2000`, the "
              "benchmark's input) against the --workers 2 server: its client-side latency, and the server's own "
              "split from ModelStatistics (queue for a free instance, the model, request/response decoding), in us "
              "per request.", "",
              "| model | concurrency | infer/s | p50 | p99 | server queue | server infer | server input+output |",
              "|---|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        for row in sorted(r.get("perf_analyzer", []), key=lambda row: row["concurrency"]):
            lines.append(f"| {r['model']} | {row['concurrency']} | {row['infer_per_s']:.0f} | {row['p50_us']:.0f} | "
                         f"{row['p99_us']:.0f} | {row['server_queue_us']:.0f} | {row['server_infer_us']:.0f} | "
                         f"{row['server_io_us']:.0f} |")
    return lines


@block("serve-summary", "serve.json")
def serve_summary(d: dict) -> list[str]:
    return [f"{_from(d, d['machine'], 'serve.json')} what a gRPC call adds over an in-process one, and that against "
            "a bare grpcio echo of the same request bytes: " + _join(
                f"{r['model']} ({r['request_bytes']} request bytes) adds {r['added_us']:.0f} us to "
                f"{r['inprocess_us'][0]:.0f} us in-process, {_x(r['added_vs_echo'])} the echo's "
                f"{r['echo_us'][0]:.0f} us" for r in d["results"]) + "."]


# ------------------------------------------------------------------------------------------ compression.json

@block("compression", "compression.json")
def compression(d: dict) -> list[str]:
    lines = [f"{_on(d)} {_where(d['machine'])}, onnxruntime {d['onnxruntime']}, {d['threads']} threads, batch 1, "
             f"random weights, calibration on {d['calibration']} synthetic inputs. Command: `{d['command'].strip()}`",
             "", "Speed-up = fp32 onnxruntime p50 / candidate p50, both measured back to back in this process. "
             "Cosine and arg-max vs fp32 are for orientation only (random weights, synthetic inputs).", "",
             "| model | candidate | build s | fp32 p50 ms | p50 ms | speed-up | cosine vs fp32 | same arg-max |",
             "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['candidate']} | failed: {r['error']} | | | | | |")
        else:
            lines.append(f"| {r['model']} | {r['candidate']} | {r['build_s']:.1f} | {r['fp32_p50']:.3f} | "
                         f"{r['p50']:.3f} | {_x(r['speedup'])} | {r['cosine']:.4f} | {r['argmax_same']} |")
    lines += ["", "What the gate ships: the real flow (`kiln optimize examples/MODEL --candidates onnxruntime,"
              "ort-fp32-basic,ort-int8-dynamic,ort-int8-static`) with the example's ranges and synthetic "
              "calibration; speed-up of the published model vs fp32 onnxruntime, measured by the flow.", "",
              "| model | published | speed-up | inside every range |", "|---|---|---|---|"]
    for s in d["shipped"]:
        if "error" in s:
            lines.append(f"| {s['model']} | failed: {s['error']} | | |")
        else:
            lines.append(f"| {s['model']} | {s['selected']} | {_x(s['speedup'])} | {', '.join(s['passed'])} |")
    return lines


def _by_model(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            out.setdefault(r["model"], []).append(r)
    return out


@block("compression-summary", "compression.json")
def compression_summary(d: dict) -> list[str]:
    built = _join(f"{m} " + ", ".join(f"{r['candidate']} {_x(r['speedup'])}" for r in rows)
                  for m, rows in _by_model(d["rows"]).items())
    shipped = _join(f"{s['model']} {s['selected']} {_x(s['speedup'])}" for s in d["shipped"] if "error" not in s)
    return [f"{_from(d, d['machine'], 'compression.json')} speed-up over fp32 onnxruntime with random weights, "
            f"{built}. Published through the real flow and its gate: {shipped}."]


@block("readme-int8", "compression.json")
def readme_int8(d: dict) -> list[str]:
    best = [max((r for r in rows if "int8" in r["candidate"]), key=lambda r: r["speedup"])
            for rows in _by_model(d["rows"]).values()]
    return [f"{_from(d, d['machine'], 'compression.json')} the fastest int8 candidate over fp32 onnxruntime with "
            "random weights, " + _join(f"{r['model']} {r['candidate']} {_x(r['speedup'])}" for r in best) + "."]


# ---------------------------------------------------------------------------------------- int8_isa.json

def _cpu_of(d: dict, row: dict) -> str:
    return f"emulated znver3 (`{d['emulated']['qemu']}`)" if row["cpu"] != d["host_isa"] else f"host ({row['cpu']})"


@block("int8-isa", "int8_isa.json")
def int8_isa(d: dict) -> list[str]:
    """The accuracy (not the speed: emulation times nothing) of each int8 scheme on the host and on an emulated
    AVX2-only CPU, the same model files run on both."""
    head = (f"{_on(d)} {d['host_cpu']} (int8 ISA `{d['host_isa']}`) and, emulated, an AMD EPYC znver3 (detected "
            f"`{d['emulated']['detected_isa']}`), from `benchmarks/int8_isa.json`: {d['model']}, onnxruntime "
            f"{d['onnxruntime']}, cosine with fp32 per sentence over the real tokens.")
    lines = [head, "", "| candidate | weights | CPU | lengths | sentences | worst cosine | mean cosine | "
             "worst sentence_embedding cosine |", "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        if r["scheme"] == "-":
            continue
        lines.append(f"| {r['candidate']} | {r['scheme']} | {_cpu_of(d, r)} | {r['lengths']} | {r['sentences']} | "
                     f"{r['min_cosine']:.4f} | {r['mean_cosine']:.4f} | {r['min_cosine_sentence_embedding']:.4f} |")
    return lines


@block("readme-int8-isa", "int8_isa.json")
def readme_int8_isa(d: dict) -> list[str]:
    pick = {(r["candidate"], r["scheme"], r["cpu"] == d["host_isa"]): r for r in d["rows"]
            if r["lengths"] == "natural" and r["candidate"] == "ort-int8-fused-smooth"}
    worst = {k: f"{v['min_cosine_sentence_embedding']:.4f}" for k, v in pick.items()}
    c = "ort-int8-fused-smooth"
    return [f"{_on(d)} {d['host_cpu']} and an emulated znver3, from `benchmarks/int8_isa.json`: all-MiniLM-L6-v2's "
            f"worst sentence-embedding cosine with {c}, U8S8 {worst.get((c, 'U8S8', True))} on the host and "
            f"{worst.get((c, 'U8S8', False))} emulated (the range is 0.99); U8U8 {worst.get((c, 'U8U8', True))} on "
            f"the host and {worst.get((c, 'U8U8', False))} emulated."]


# ------------------------------------------------------------------------------------------ images.json

@block("images", "images.json")
def images(d: dict) -> list[str]:
    c, h = d["container_us"], d["host_us"]
    return [f"{_on(d)} {_where(d['machine'])}. Base {d['base']} ({d['base_mb']:.0f} MB); Docker {d['docker']}; "
            "digits artifact (onnxruntime); container on the host network; same client for both, 5 alternating "
            "rounds.", "",
            "| measure | value |", "|---|---|",
            f"| generic runtime image size | **{d['runtime_mb']:.0f} MB** (goal < 300 MB) |",
            f"| generic runtime image build, no layer cache (wheels already on the host) | "
            f"{d['runtime_build_s']:.1f} s |",
            f"| digits model image build, cold (no layer cache) | {d['model_build_cold_s']:.2f} s |",
            f"| digits model image build, cached | {d['model_build_cached_s']:.2f} s |",
            f"| `build_model_image` end to end (runtime layers cached, verify + tag, no push) | "
            f"{d['build_model_image_s']:.2f} s |",
            f"| digits model image size | {d['model_mb']:.0f} MB |",
            f"| container start to SERVING | {d['start_to_serving_s']:.2f} s |",
            f"| gRPC p50 / p99, in the container | {c[0]:.0f} / {c[1]:.0f} us |",
            f"| gRPC p50 / p99, `kiln serve` on the host | {h[0]:.0f} / {h[1]:.0f} us |",
            f"| container / host p50 | {_x(d['container_over_host'])} |"]


# ------------------------------------------------------------------------------------------ node_suite.json

@block("node_suite", "node_suite.json")
def node_suite(d: dict) -> list[str]:
    s = d["summary"]
    total = s.get("total", s["cases"])
    versions = ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items())
    errors = [r for r in d["cases"] if r["outcome"] == "internal error"]
    return [f"{_on(d)} {_where(s)}: `python benchmarks/node_suite.py` ({s['cases']} of the {total} cases with "
            "tensor I/O and numeric data"
            f"{' so far, in alphabetical order: the run is resumable' if s['cases'] < total else ''}"
            f"{'; ' + versions if versions else ''}). A case passes when its outputs match the recorded ones (raw: "
            "allclose 1e-3) or, for kiln's tvm candidate, when it is inside the default ranges against onnxruntime "
            "(max_rel_diff <= 1e-3, cosine >= 0.9999).", "",
            "| | pass rate |", "|---|---|",
            f"| onnxruntime, raw | {s['onnxruntime_pass_pct']} % |",
            f"| TVM, raw (relax ONNX importer, default pipeline) | {s['raw_tvm_pass_pct']} % |",
            f"| kiln's tvm candidate (prepare: shapes fixed, functions inlined, constants folded) | "
            f"{s['kiln_tvm_pass_pct']} % |",
            f"| kiln published an artifact | {s['kiln_published_pct']} % |", "",
            f"Outcomes: {s['outcomes']}; internal errors: {len(errors)}",
            *(f"- {r['case']}: {r['message'][:200]}" for r in errors[:20])]


# --------------------------------------------------------------------------------------- natural_lengths.json

@block("natural-lengths", "natural_lengths.json")
def natural_lengths(d: dict) -> list[str]:
    """The bar of issue 24: the artifact `kiln optimize` ships with no --shape, timed by the benchmark itself on
    every sentence at its own length against onnxruntime fp32 on the original model."""
    lines = [f"{_on(d)} {_where(d)}: `python benchmarks/natural_lengths.py` ({d['threads']} threads, onnxruntime "
             f"{d['onnxruntime']}, {d['rounds']} alternating rounds): `kiln optimize model.onnx --data real.parquet "
             "--range 'cosine>=0.99' --trials 0 --json`, no --shape, no --dim; then the published artifact "
             "(`kiln.load`) and onnxruntime fp32 on the original model, each sentence at its own length. Ratio: "
             "onnxruntime's mean latency over the artifact's; cosine: each sentence's mean-pooled embedding "
             "against fp32's.", "",
             "| model | sentences (median / max tokens) | shipped | profile | kiln's confirmed speed-up | measured "
             "ratio (per round) | artifact / onnxruntime mean ms | worst / mean pooled cosine | length 3, 37, 600 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        if r.get("exit_code") != 0 or "ratio" not in r:
            lines.append(f"| {r['model']} | {r['samples']} ({r['median_tokens']:g} / {r['max_tokens']}) | nothing "
                         f"(exit {r.get('exit_code')}) | | | | | | |")
            continue
        rounds = f"{min(r['ratio_rounds']):.2f}-{max(r['ratio_rounds']):.2f}"
        checks = "; ".join(f"{n}: {v.split(':')[0]}" for n, v in r["checks"].items())
        lines.append(f"| {r['model']} | {r['samples']} ({r['median_tokens']:g} / {r['max_tokens']}) | "
                     f"{r['selected']} | {r['profile']} | {r['kiln_speedup']:.2f}x | **{r['ratio']:.2f}x** "
                     f"({rounds}) | {r['kiln_mean_ms']:.3g} / {r['ort_mean_ms']:.3g} | "
                     f"{r['min_pooled_cosine']:.4f} / {r['mean_pooled_cosine']:.4f} | {checks} |")
    lines += ["", "Per length bucket (p50 ms over the rounds, the bucket's share of the sentences):", "",
              "| model | tokens | share | artifact p50 ms | onnxruntime p50 ms | ratio |", "|---|---|---|---|---|---|"]
    for r in d["results"]:
        for b in r.get("buckets", []):
            lines.append(f"| {r['model']} | {b['tokens']} | {b['share']:.0%} | {b['kiln_p50_ms']:.3g} | "
                         f"{b['ort_p50_ms']:.3g} | {b['ort_p50_ms'] / b['kiln_p50_ms']:.2f}x |")
    return lines


@block("readme-natural-lengths", "natural_lengths.json")
def readme_natural_lengths(d: dict) -> list[str]:
    parts = [f"{r['model']} shipped {r['selected']} at {r['ratio']:.2f}x the speed of onnxruntime fp32 on the "
             f"original model at each sentence's own length (worst pooled cosine {r['min_pooled_cosine']:.4f})"
             for r in d["results"] if "ratio" in r]
    return [f"{_from(d, d, 'natural_lengths.json')} {_join(parts) if parts else 'nothing yet'}."]


# ----------------------------------------------------------------------------------------------- batching.json

@block("batching", "batching.json")
def batching(d: dict) -> list[str]:
    lines = [f"{_on(d)} {_where(d)}: `{d['command']}` (the artifact shipped {d['selected']}): all-MiniLM-L6-v2 "
             "served over KServe v2 gRPC, each request one real sentence at its own length, from tritonclient "
             f"threads; batching on: `--max-queue-delay-us {d['delay_us']} --max-batch 8` (requests padded to the "
             f"longest in their batch, the program naming the pad values). Both servers measured in "
             f"{d['rounds']} alternating rounds per concurrency.", "",
             "| clients | batching | requests/s | p50 ms | p99 ms | executions per request |",
             "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['clients']} | {r['batching']} | {r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['executions_per_request']:.2f} |")
    by = {(r["clients"], r["batching"]): r for r in d["rows"]}
    if (8, "on") in by and (8, "off") in by and (1, "off") in by:
        lines += ["", f"At 8 clients, batching gives {by[(8, 'on')]['rps'] / by[(8, 'off')]['rps']:.2f}x the "
                      f"throughput without it, with a p99 of {by[(8, 'on')]['p99_ms'] / by[(1, 'off')]['p99_ms']:.2f}x "
                      "the p99 of one client without it."]
    return lines


# ------------------------------------------------------------------------------------------ targets.json

def _target_row(r: dict) -> str:
    what = f"row {r['model']} --target {r['target']}"
    stamp = f"{_on(r, what)} {_where(r.get('machine') or {}, flat=True, what=what)}"
    if r.get("exit"):
        return f"| {r['model']} | {r['target']} | failed: {' '.join(r.get('error') or [])} | | | | | | {stamp} |"
    interval = (f" ({r['speedup_low']:.2f}-{r['speedup_high']:.2f})" if r.get("speedup_low") is not None else "")
    accuracy = ", ".join(f"{k} {v:.4f}" for k, v in r["accuracy"].items() if v is not None)
    counts = r["avx512_instructions"]
    avx512 = f"{sum(1 for n in counts.values() if n)} of {len(counts)} builds" if counts else "no TVM build"
    base = r["p50_ms"].get("onnxruntime")
    tvm = "; ".join([f"{n} {base / ms:.2f}x" for n, ms in r["p50_ms"].items() if n.startswith("tvm") and base] +
                    [f"{n}: {why.split(';')[0][:100]}" for n, why in r.get("not_timed", {}).items()
                     if n.startswith("tvm")])
    return (f"| {r['model']} | {r['target']} (`{r['mcpu']}`) | {r['selected']} | {_x(r['speedup'])}{interval} | "
            f"{accuracy} | {tvm or '-'} | {len(r['requires'])} flags | {avx512} | {stamp} |")


@block("targets", "targets.json")
def targets(d: dict) -> list[str]:
    """Each model optimized for this host and for x86-64-v3 on one machine: what each target selected, its
    confirmed speed-up over onnxruntime fp32 here, and whether any TVM build of the run uses AVX-512."""
    _every(d["runs"], _target_row)
    lines = ["`python benchmarks/targets.py`: each model optimized for each target in a fresh KILN_HOME "
             "(`kiln optimize MODEL --target T ... --json`, the row's `kiln_command`). Speed-up: the confirmed one "
             "over fp32 onnxruntime on this host, with its 90 % bootstrap interval; for x86-64-v3 the host ran the "
             "same code in place of an AVX2 CPU. AVX-512: the run's TVM builds (artifact and build cache) holding a "
             "zmm/opmask/EVEX-only register or vpdpbusd/vpdpwssd (`objdump -d`). TVM rows: each TVM candidate's "
             "selection-round speed over onnxruntime, or why it was not timed (a few minutes of tuning leave most "
             "kernels of a large model untuned: KILN_HOPELESS_SLOWDOWN stops those).", "",
             "| model | target | selected | speed-up | accuracy | TVM rows | requires | AVX-512 in | measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    return lines + [_target_row(r) for r in sorted(d["runs"], key=lambda r: (r["model"], r["target"] != "host"))]


@block("target-fleet", "target_fleet.json")
def target_fleet(d: dict) -> list[str]:
    """The bar `target-fleet` (benchmarks/target_fleet.py): each condition, whether it held, and what showed it."""
    lines = [f"{_from(d, d['machine'], 'target_fleet.json')} `{d['command']}` "
             f"({'every condition held' if d['held'] else 'NOT every condition held'}). Runs: "
             + "; ".join(f"`{r['command']}` (exit {r['exit']}, {r['seconds']:.0f} s"
                         + (f", selected {r['selected']}, {r['speedup']:.2f}x" if r.get("selected") else "") + ")"
                         for r in d["runs"]), "", "| condition | held | shown |", "|---|---|---|"]
    for c in d["conditions"]:
        shown = c["shown"] if isinstance(c["shown"], str) else json.dumps(c["shown"])
        lines.append(f"| {c['condition']} | {'yes' if c['held'] else '**no**'} | {shown.replace('|', '/')[:400]} |")
    return lines


@block("devices", "devices.json")
def devices(d: dict) -> list[str]:
    """The encoder tuned with 1 and with 2 devices under one key (benchmarks/devices.py): trials the devices
    measured and the TVM p50 reached, against onnxruntime's p50 on the same device in the same run."""
    lines = [f"{_from(d, d['machine'], 'devices.json')} `{d['command']}`: each device `taskset -c N kiln device` "
             "(one core), TVM's tracker on loopback, a fresh KILN_HOME per run; p50s are the selection rounds on "
             "the device (interleaved, same run). The optimizer's builder shares the same two cores.", "",
             "| devices | tuning | trials measured | failed (on the device side) | tuner's estimate | tvm p50 | "
             "onnxruntime p50 | tvm / onnxruntime | selected | run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["runs"]:
        if r["exit"] != 0:
            lines.append(f"| {r['devices']} | {r['minutes']:g} min | exit {r['exit']} | | | | | | | "
                         f"{r['seconds']:.0f} s |")
            continue
        p50 = r["p50_ms"]
        est = f"{r['estimated_ms']:.3g} ms" if r.get("estimated_ms") else "- (a task unmeasured)"
        ratio = f"{r['tvm_vs_onnxruntime']:.2f}" if r.get("tvm_vs_onnxruntime") else "-"
        lines.append(f"| {r['devices']} (cores {', '.join(r['cores'])}) | {r['minutes']:g} min | {r['trials']} | "
                     f"{r['failed']} ({r['device_failed']}) | {est} | "
                     f"{p50.get('tvm', 0) or 0:.3g} ms | {p50['onnxruntime']:.3g} ms | {ratio} | {r['selected']} | "
                     f"{r['seconds']:.0f} s |")
    return lines


# ------------------------------------------------------------------------------------------ real_models.json

def _stamped(r: dict) -> str:
    """A real_models.json row's `Measured DATE on CPU`: each row records its own (rows of other models and
    days stay when one model is rerun)."""
    what = f"row {r['model']} run {r['run']}"
    rerun = f" (rerun `python benchmarks/real_models.py --models {r['model']}`)"
    try:
        return f"{_on(r, what)} {_where(r.get('machine') or {}, mcpu=False, what=what)}"
    except Unfit as exc:
        raise Unfit(str(exc) + rerun) from None


def _confirmed(r: dict) -> str:
    """The shipped candidate's confirmed speed-up; Unfit for a row that has none (the selection rounds' best
    ratio is biased upward: the docs never quote it as what shipped)."""
    if r.get("baseline"):
        return "1.00x (the unchanged model: nothing beat it)"
    if r["selected"] and not r.get("confirmed"):
        raise Unfit(f"row {r['model']} run {r['run']} has no confirmed speed-up (written before confirmation, or "
                    f"by another script): rerun `python benchmarks/real_models.py --models {r['model']}`")
    s = r["speedup"]
    return f"{s['value']:.2f}x (90 % interval {s['low']:.2f}-{s['high']:.2f}x)"


def _shipped(runs: list[dict]) -> str:
    return "; ".join(f"run {r['run']}: {r['selected']} at {_confirmed(r)}"
                     + (f", confirmed over {r['confirmation']['inputs']} inputs" if r.get("confirmed") else "")
                     + f" ({r['seconds']} s)" if r["selected"] else f"run {r['run']}: nothing" for r in runs)


def _dates(runs: list[dict]) -> str:
    """`Measured DATE on CPU` once where every run shares it, else per run."""
    stamps = list(dict.fromkeys(_stamped(r) for r in runs))
    return stamps[0] if len(stamps) == 1 else "; ".join(f"run {r['run']}: {_stamped(r)}" for r in runs)


def _fit(r: dict) -> None:
    _stamped(r)
    if r["selected"]:
        _confirmed(r)


@block("real_models", "real_models.json")
def real_models(d: dict) -> list[str]:
    _every(d["results"], _fit)
    models = d.get("models", {})
    lines = ["`python benchmarks/real_models.py` (batch 1; each model optimized twice, `kiln optimize MODEL --data "
             "SAMPLES --range RANGE --trials 0 --ignore-current`, or with a tuning budget where TVM candidates are "
             "compared, each row's command under its table; `demo` is `make demo`'s command). Speed-up: the "
             "median of the per-round ratios to fp32 onnxruntime, timed in interleaved rounds in one process, with "
             "its 90 % bootstrap interval: per candidate, the selection rounds' (bold: shipped); under each table, "
             "the shipped candidate's confirmed one (timed again in fresh rounds after the gate chose it: what the "
             "artifact claims).", ""]
    names = list(dict.fromkeys([*models, *(r["model"] for r in d["results"])]))
    for name in names:
        runs = [r for r in d["results"] if r["model"] == name]
        if not runs:
            continue
        spec = models.get(name, {"what": name, "range": "?"})
        lines += [f"**{name}**: {spec['what']}; range `{spec['range']}`. {_dates(runs)}.", "",
                  "| candidate | " + " | ".join(f"run {r['run']} speed-up | run {r['run']} metric" for r in runs)
                  + " | why not (run 1) |", "|---|" + "---|---|" * len(runs) + "---|"]
        for cand in dict.fromkeys(c["name"] for r in runs for c in r["candidates"]):
            cells = []
            for r in runs:
                c = next((c for c in r["candidates"] if c["name"] == cand), None)
                if c is None or c["speedup"] is None:
                    cells += ["-", "-"]
                    continue
                s = c["speedup"]
                text = f"{s['value']:.2f}x ({s['low']:.2f}-{s['high']:.2f})"
                cells += [f"**{text}**" if r["selected"] == cand else text,
                          " ".join(f"{v:.4g}" for v in c["metrics"].values())]
            first = next((c for c in runs[0]["candidates"] if c["name"] == cand), {})
            how = [f"only {', '.join(first['quantized_ops'])} quantized"] if first.get("quantized_ops") else []
            how += [f"{first['kept_fp32']} node(s) kept fp32"] if first.get("kept_fp32") else []
            label = f"{cand} ({'; '.join(how)})" if how else cand
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {first.get('reason', '')} |")
        lines += ["", f"Shipped, confirmed: {_shipped(runs)}.", ""]
        if "--tune-time" in runs[0].get("command", ""):
            lines[-1:-1] = [f"Command: `{runs[0]['command']}`.", ""]
    return lines[:-1]


@block("readme-demo", "real_models.json")
def readme_demo(d: dict) -> list[str]:
    runs = [r for r in d["results"] if r["model"] == "demo"]
    if not runs:
        raise Unfit("has no `demo` row (`make demo`'s command): run `python benchmarks/real_models.py --models demo`")
    _every(runs, _fit)
    return [f"{_dates(runs)}, from `benchmarks/real_models.json`: `{runs[-1]['command']}` (`make demo`'s command, "
            "with --ignore-current --json) shipped, with its confirmed speed-up over fp32 onnxruntime and the run's "
            f"wall time, {_shipped(runs)}."]


@block("readme-real-models", "real_models.json")
def readme_real_models(d: dict) -> list[str]:
    per_model: dict[str, dict[str, list[str]]] = {}
    rows = [r for r in d["results"] if r["model"] != "demo"]
    _every(rows, _fit)
    for r in rows:  # each run's pick, runs that shipped the same candidate together
        per_model.setdefault(r["model"], {}).setdefault(r["selected"] or "nothing", []).append(
            _confirmed(r).split(" ")[0] if r["selected"] else f"run {r['run']}")
    stamps = list(dict.fromkeys(_stamped(r) for r in rows))
    return [f"{'; '.join(stamps)}, from `benchmarks/real_models.json`: real models with real inputs, what the gate "
            "shipped in each run and its confirmed speed-up over fp32 onnxruntime, " + _join(
                f"{model} " + ", ".join(f"{sel} {' and '.join(xs)}" for sel, xs in picks.items())
                for model, picks in per_model.items()) + "."]


# ------------------------------------------------------------------------------------------ tvm_passes.json

@block("tvm_passes", "tvm_passes.json")
def tvm_passes(d: dict) -> list[str]:
    threads = f", {d['threads']} threads" if d.get("threads") else ""
    commands = "; ".join(dict.fromkeys(f"`{m.get('command', d['command']).strip()}` ({m.get('date', d['date'])})"
                                       for m in d["results"]))
    lines = [f"{_on(d)} {_where(d['machine'])}{threads}, batch 1. Commands (dates): {commands}. Each variant "
             "tuned for "
             "the same time; variants marked (paired) tuned in turn into one database and were all rebuilt from it, "
             "so they share every kernel a pass did not change; the others each had a database of their own. All "
             "timed in interleaved rounds beside fp32 onnxruntime in one process (ratio: median of per-round ratios, "
             "below 1 = faster). `max abs diff`: largest difference from onnxruntime's output on the same input.", "",
             "| model | variant | kiln passes applied | trials (failed) | tuner's estimate ms | p50 ms | "
             "/ onnxruntime | max abs diff |", "|---|---|---|---|---|---|---|---|"]
    for m in d["results"]:
        for r in m["rows"]:
            est = f"{r['estimated_ms']:.2f}" if r["estimated_ms"] else "-"
            variant = r["variant"] + (" (paired)" if r.get("paired") else "")
            lines.append(f"| {m['model']} ({m['minutes']:g} min) | {variant} | {', '.join(r['passes']) or '-'} "
                         f"| {r['trials']} ({r['failed']}) | {est} | {r['p50_ms']:.3f} | {r['over_ort']:.2f} | "
                         f"{r['max_abs_diff']:.2g} |")
    lines += ["", "Where the default variant's time goes (VM instrument hook, 50 runs): end to end, the calls' sum "
              "(kernels and VM builtins timed in place), and the tuner's estimate (kernels measured alone).", "",
              "| model | end to end ms | calls' sum ms | tuner's estimate ms | top calls (us per run x calls) |",
              "|---|---|---|---|---|"]
    for m in d["results"]:
        p = m["profile"]
        top = "; ".join(f"{s} {us:g} x{n}" for s, us, n in p["top"][:6])
        est = f"{p['estimated_ms']:.2f}" if p["estimated_ms"] else "-"
        lines.append(f"| {m['model']} | {p['e2e_ms']:.3f} | {p['sum_ms']:.3f} | {est} | {top} |")
    return lines


@block("readme-passes", "tvm_passes.json")
def readme_passes(d: dict) -> list[str]:
    return [f"{_from(d, d['machine'], 'tvm_passes.json')} `benchmarks/tvm_passes.py`'s variants, each after the "
            "same tuning time, in time over fp32 onnxruntime, " + _join(
                f"{m['model']} ({m['minutes']:g} minutes each) " + ", ".join(
                    f"{r['variant']} {_x(r['over_ort'])}" for r in m["rows"]) for m in d["results"]) + "."]


# ------------------------------------------------------------------------------------------ tuning_curve.json

@block("tuning_curve", "tuning_curve.json")
def tuning_curve(d: dict) -> list[str]:
    info = d["machine"]
    lines = [f"{_on(d)} {_where(info)}, {d['threads']} threads, batch 1. One search per model, continued segment by "
             "segment "
             "from its own database (each curve starts from nothing, unless its command has --shared: then the "
             "models share one CPU database in the order given, as kiln's runs do); at each checkpoint the best "
             "kernels so far are compiled and timed in interleaved rounds beside fp32 onnxruntime and onnxruntime "
             "int8 in the same process. Ratios are medians of per-round ratios (below 1 = faster than fp32 "
             "onnxruntime).", "",
             "Commands: " + "; ".join(dict.fromkeys(f"`{m['command'].strip()}`" for m in d["results"]
                                                    if "command" in m)),
             "", "![tuning curve](tuning_curve.svg)", "",
             "| model | minutes | trials so far (failed) | TVM p50 ms | onnxruntime p50 ms | TVM / ORT | int8 / ORT | "
             "tuner's estimate ms |", "|---|---|---|---|---|---|---|---|"]
    for m in d["results"]:
        trials = failed = 0
        for r in m["rows"]:  # each row's counts are its segment's
            trials, failed = trials + r["trials"], failed + r["failed_trials"]
            est = f"{r['estimated_ms']:.3f}" if r["estimated_ms"] else "-"
            lines.append(f"| {m['model']} | {r['minutes']:g} | {trials} ({failed}) | "
                         f"{r['tvm_p50_ms']:.3f} | {r['ort_p50_ms']:.3f} | {r['tvm_over_ort']:.2f} | "
                         f"{r['int8_over_ort']:.2f} ({m['int8']}) | {est} |")
    return lines


def _curve(m: dict) -> str:
    rows = m["rows"]
    points = ", ".join(("untuned " if not r["minutes"] else f"{r['minutes']:g} min ") + _x(r["tvm_over_ort"])
                       for r in rows)
    int8 = [r["int8_over_ort"] for r in rows]
    last = rows[-1]
    return (f"{m['model']}{' (shared database)' if m.get('shared') else ''}: {points} "
            f"(last: {last['tvm_p50_ms']:.1f} ms against {last['ort_p50_ms']:.1f} ms); "
            f"{m['int8']} {min(int8):.2f}-{max(int8):.2f}x")


@block("tuning_curve-summary", "tuning_curve.json")
def tuning_summary(d: dict) -> list[str]:
    return [f"{_from(d, d['machine'], 'tuning_curve.json')} TVM's time over fp32 onnxruntime by minutes of tuning "
            f"({d['threads']} threads), and the int8 candidate's range over the same checkpoints:", "",
            *(f"- {_curve(m)}" for m in d["results"])]


@block("readme-tuning", "tuning_curve.json")
def readme_tuning(d: dict) -> list[str]:
    by = {m["model"]: m for m in d["results"]}
    reach = ", ".join(f"{m['model']} {_x(m['rows'][-1]['tvm_over_ort'])} after {m['rows'][-1]['minutes']:g} minutes"
                      for m in d["results"])
    fast = []
    for name, m in by.items():
        exact = by.get(name.removesuffix("+fast-math"))
        if name.endswith("+fast-math") and exact:
            last = m["rows"][-1]
            same = next((r for r in exact["rows"] if r["minutes"] == last["minutes"]), None)
            fast.append(f"{exact['model']} is at {_x(last['tvm_over_ort'])} after {last['minutes']:g} minutes with "
                        "tvm-fast-math's passes" + (f", {_x(same['tvm_over_ort'])} without them" if same else ""))
    return [f"{_from(d, d['machine'], 'tuning_curve.json')} the curves so far, TVM's time over fp32 onnxruntime at "
            f"each one's last checkpoint, {reach}." + (f" Fast math: {_join(fast)}." if fast else "")]


@block("tuning_curve-int8", "tuning_curve_int8.json")
def tuning_curve_int8(d: dict) -> list[str]:
    """kiln's int8 compiler by minutes of tuning: TVM int8 over onnxruntime running the same quantized model."""
    lines = [f"{_on(d)} {_where(d['machine'])}, {d['threads']} threads, batch 1. `tuning_curve.py --int8`: one "
             "search per "
             "model of kiln's int8 kernels (the intrinsic in the model's name) on the quantized model onnxruntime's "
             "int8 candidate built; at each checkpoint compiled and timed in interleaved rounds beside onnxruntime "
             "fp32 and onnxruntime on that same int8 model. Ratios are medians of per-round ratios.", "",
             "Commands: " + "; ".join(dict.fromkeys(f"`{m['command'].strip()}`" for m in d["results"]
                                                    if "command" in m)),
             "", "![int8 tuning curve](tuning_curve_int8.svg)", "",
             "| model | minutes | trials so far (failed) | TVM int8 p50 ms | onnxruntime int8 p50 ms | onnxruntime "
             "fp32 p50 ms | **TVM int8 / ORT int8** | TVM int8 / ORT fp32 |", "|---|---|---|---|---|---|---|---|"]
    for m in d["results"]:
        trials = failed = 0
        for r in m["rows"]:
            trials, failed = trials + r["trials"], failed + r["failed_trials"]
            lines.append(f"| {m['model']} ({m['int8']}) | {r['minutes']:g} | {trials} ({failed}) | "
                         f"{r['tvm_p50_ms']:.3f} | {r['int8_p50_ms']:.3f} | {r['ort_p50_ms']:.3f} | "
                         f"**{r['tvm_over_int8']:.2f}** | {r['tvm_over_ort']:.2f} |")
    return lines


# ---------------------------------------------------------------------------------------------- int8_vs_ort.json

def _int8_row(r: dict, d: dict) -> tuple[str, str, list[str]]:
    """A row's `CPU (int8 ISA, LLVM mcpu), date`, the command that reruns it, and its caveats where it is stale
    (run by hand, not by this script; a kernel record older than the per-microarchitecture peak and the
    per-bucket records). Unfit for a row without its date or CPU."""
    what = f"row {r['model']} {r['minutes']:g} min"
    rerun = f"python benchmarks/int8_vs_ort.py --models {r['model']} --minutes {r['minutes']:g}"
    rm = r.get("machine") or {}
    if not r.get("date"):
        raise Unfit(f"{what} records no date: rerun `{rerun}`")
    if not rm.get("cpu"):
        raise Unfit(f"{what} records no CPU: rerun `{rerun}`")
    caveats = []
    command = r.get("command", "")
    # the script's rows name it; before that they held the `kiln optimize` command it ran on its own model files
    legacy = command.startswith("optimize ") and command.split()[1].endswith(
        ("/examples/encoder/model.onnx", f"/benchmarks/work/real/models/{r['model']}/model.onnx"))
    if not (command.startswith("python benchmarks/int8_vs_ort.py") or legacy):
        kiln = command if command.startswith("kiln ") else f"kiln {command}"
        caveats.append(f"run by hand with `{kiln}`, not by benchmarks/int8_vs_ort.py")
    if any("mcpu" not in build for build in r.get("tasks") or []):
        caveats.append("kernel shares not shown: its kernel record predates the per-microarchitecture int8 peak and "
                       "the per-bucket records (a bucketed model's trials and kernels are one bucket's)")
    if caveats:
        _stale(what, "; ".join(caveats), rerun)
    mcpu = f", `{rm['llvm_mcpu']}`" if rm.get("llvm_mcpu") else ""
    return f"{rm['cpu']} ({rm.get('int8_isa', '?')}{mcpu}), {r['date']}", rerun, caveats


def _peak(build: dict) -> str:
    if build.get("peak_gops") is None:
        return f"no int8 peak for `{build['mcpu']}`: kiln.compiler.int8.peak has no sourced figure for it"
    return (f"peak {build['peak_gops']:g} GOP/s = {build['cores']} cores x {build['clock_ghz']:g} GHz ("
            f"{build['clock']}) x {build['ops_per_cycle']:g} int8 ops per cycle ({build['uarch']}, "
            "kiln.compiler.int8.peak)")


@block("int8-compiler", "int8_vs_ort.json")
def int8_compiler(d: dict) -> list[str]:
    """Issue 25's bar: kiln's own int8 kernels (tvm-int8-*) against onnxruntime's best int8 inside the range,
    measured in one run by kiln's interleaved rounds."""
    from kiln.compiler.int8.peak import flag

    _every(d["runs"], lambda r: _int8_row(r, d))
    m = d["machine"]
    lines = [f"`python benchmarks/int8_vs_ort.py` (last run: {_on(d)} {_where(m, mcpu=False)}; each row says its "
             "own CPU and date): each row one `kiln optimize MODEL.onnx --candidates onnxruntime,<onnxruntime int8>,"
             "<tvm int8> --tune-time N --range ... --json` in a fresh KILN_HOME; ratio: the TVM int8 row's p50 over "
             "the best onnxruntime int8 row's p50 inside the range (<= 1.00: TVM as fast or faster). Trials: every "
             "shape bucket's, where the TVM candidate is bucketed.", "",
             "| model | tuning | shipped | onnxruntime fp32 p50 ms | best onnxruntime int8 (p50 ms) | TVM int8 "
             "p50 ms | tvm / ort int8 | TVM int8 accuracy | intrinsic | trials | CPU (int8 ISA, LLVM mcpu), date |",
             "|---" * 11 + "|"]
    stale = []
    for r in d["runs"]:
        cpu, rerun, caveats = _int8_row(r, d)
        if caveats:
            cpu += ", stale (below)"
            stale.append(f"- {r['model']}, {r['minutes']:g} min: {'; '.join(caveats)}; rerun `{rerun}`")
        if r.get("exit") != 0:
            lines.append(f"| {r['model']} | {r['minutes']:g} min | nothing (exit {r.get('exit')}) | | | | | | | | "
                         f"{cpu} |")
            continue
        p50, best = r["p50_ms"], r.get("best_ort_int8")
        builds = r.get("tasks") or []
        name = r.get("tvm", "tvm-int8-dynamic")
        accuracy = ", ".join(f"{k} {v:.4f}" for k, v in r["accuracy"].get(name, {}).items()) or "-"
        tvm = f"{name} {p50[name]:.3g}" if name in p50 else f"{name}: " + "; ".join(r["tvm_reasons"])[:80]
        ratio = f"**{r['tvm_over_ort_int8']:.2f}**" if "tvm_over_ort_int8" in r else "-"
        trials_run = r.get("trials_run", sum(b["trials_run"] for b in builds))  # a legacy row: its one build's
        trials = f"{trials_run}" + (f" ({len(builds)} buckets)" if len(builds) > 1 else "") if builds else "-"
        intrinsic = builds[0]["intrinsic"] if builds else "-"
        lines.append(f"| {r['model']} | {r['minutes']:g} min | {r['selected']} | {p50.get('onnxruntime', 0):.3g} | "
                     f"{best} ({p50.get(best, 0):.3g}) | {tvm} | {ratio} | {accuracy} | {intrinsic} | {trials} | "
                     f"{cpu} |")
    if stale:
        lines += ["", "Stale rows, shown as they were recorded (`python benchmarks/report.py --strict` lists them):",
                  *stale]
    flagged = False
    for r in d["runs"]:
        for build in r.get("tasks") or []:
            top = [t for t in build["tasks"] if t["int8"] and t["best_us"]][:4]
            if not top:
                continue
            where = f", bucket {build['bucket']}" if build.get("bucket") else ""
            current = "mcpu" in build  # a legacy record's shares are against the old peak: not shown
            peak = _peak(build) if current else "shares not shown: recorded before the per-microarchitecture peak"
            lines += ["", f"{r['model']}, {r['minutes']:g} min{where}: the largest int8 kernels ({build['intrinsic']}; "
                      f"{build['trials_run']} trials, first round {build['first_round']} per task; {peak}):",
                      "", "| task | weight | trials | best us | GOP/s | share of peak |", "|---|---|---|---|---|---|"]
            lines += [f"| {t['name'][:60]} | {t['weight']:g} | {t['trials']} | {t['best_us']:.1f} | {t['gops']} | "
                      f"{flag(t['peak_share'] if current and build.get('peak_gops') else None)} |" for t in top]
            flagged = flagged or (current and any((t["peak_share"] or 0) > 1 for t in top))
    if flagged:
        lines += ["", "A kernel above the peak is a measurement problem, not a share: the peak is at the base clock, "
                  "and a VM's `cpu MHz` is its nominal clock (a core in turbo runs above it), or the timing is wrong."]
    return lines


# ------------------------------------------------------------------------------------------ the machinery

def _load(root: Path, source: str, cache: dict) -> dict | None:
    if source not in cache:
        path = root / "benchmarks" / source
        cache[source] = json.loads(path.read_text()) if path.is_file() else None
    return cache[source]


def render(name: str, root: Path = ROOT, cache: dict | None = None) -> str:
    """Block NAME as it belongs in the docs, markers included, from its JSON under ROOT."""
    if name not in BLOCKS:
        raise KeyError(f"unknown generated block {name!r} (known: {', '.join(sorted(BLOCKS))})")
    source, fn = BLOCKS[name]
    data = _load(root, source, {} if cache is None else cache)
    body = fn(data) if data is not None else [f"Not measured: benchmarks/{source} is missing."]
    return "\n".join([START.format(name), "", *body, "", END])


def regenerate(text: str, root: Path = ROOT, cache: dict | None = None) -> str:
    """TEXT with every generated block replaced by what its JSON gives; a block whose JSON is Unfit is left as
    it was (said on stderr: `--check` fails on it until the JSON is rerun)."""
    cache = {} if cache is None else cache

    def one(m: re.Match) -> str:
        try:
            return render(m["name"], root, cache)
        except Unfit as exc:
            print(f"block {m['name']} left as it was: benchmarks/{BLOCKS[m['name']][0]} {exc}", file=sys.stderr)
            return m[0]

    return BLOCK.sub(one, text)


def stray_figures(text: str) -> list[tuple[int, str]]:
    """Measured-looking figures outside generated blocks, code and SETTINGS, as (line number, figure)."""
    text = BLOCK.sub(lambda m: "\n" * m[0].count("\n"), text)
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m[0].count("\n"), text, flags=re.S)
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for phrase in SETTINGS:
            line = line.replace(phrase, "")
        line = re.sub(r"`[^`]*`", "``", line)
        found += [(number, m[0]) for m in FIGURE.finditer(line)]
    return found


def check(root: Path = ROOT) -> list[str]:
    """What is wrong in the docs under ROOT: blocks that differ from their JSON, unknown or unclosed blocks,
    and figures outside blocks. Empty when all is well."""
    problems, cache = [], {}
    for doc in DOCS:
        path = root / doc
        text = path.read_text()
        closed = {m.start() for m in BLOCK.finditer(text)}
        for start in re.finditer(r"^<!-- generated: (\S+) -->$", text, re.M):
            if start.start() not in closed:
                problems.append(f"{doc}: block {start[1]}: no `{END}` after its start")
        for m in BLOCK.finditer(text):
            name = m["name"]
            try:
                want = render(name, root, cache)
            except KeyError as exc:
                problems.append(f"{doc}: block {name}: {exc.args[0]}")
                continue
            except Unfit as exc:
                problems.append(f"{doc}: block {name}: benchmarks/{BLOCKS[name][0]} {exc}")
                continue
            except Exception as exc:  # a JSON without the fields its renderer needs
                problems.append(f"{doc}: block {name}: benchmarks/{BLOCKS[name][0]} cannot be rendered: {exc!r}")
                continue
            if m[0] != want:
                diff = difflib.unified_diff(m[0].splitlines(), want.splitlines(), "in " + doc,
                                            f"from benchmarks/{BLOCKS[name][0]}", lineterm="", n=0)
                problems.append(f"{doc}: block {name} differs from benchmarks/{BLOCKS[name][0]}:\n  "
                                + "\n  ".join(list(diff)[2:12]))
        problems += [f"{doc}:{line}: figure {fig!r} outside a generated block" for line, fig in stray_figures(text)]
    return problems


def stale(root: Path = ROOT) -> list[str]:
    """The stale rows the blocks of the docs under ROOT show with a caveat, each once with its JSON and rerun:
    what must be rerun before every figure is current (--strict). Unfit and broken blocks are --check's."""
    found, cache = {}, {}
    for doc in DOCS:
        for m in BLOCK.finditer((root / doc).read_text()):
            if m["name"] not in BLOCKS:
                continue
            del _STALE[:]
            try:
                render(m["name"], root, cache)
            except Unfit:
                pass  # its other rows' caveats still count
            except Exception:
                continue
            found.update(dict.fromkeys(f"benchmarks/{BLOCKS[m['name']][0]} {s}" for s in _STALE))
    return list(found)


def rewrite(root: Path = ROOT) -> list[str]:
    """Rewrite every block of the docs under ROOT from its JSON; returns the docs that changed."""
    changed, cache = [], {}
    for doc in DOCS:
        path = root / doc
        text = path.read_text()
        new = regenerate(text, root, cache)
        if new != text:
            path.write_text(new)
            changed.append(doc)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs")
    parser.add_argument("--strict", action="store_true", help="--check, and exit 1 listing every stale row (shown "
                        "with a caveat) with its rerun")
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree whose README.md and benchmarks/ to use")
    args = parser.parse_args(argv)
    if args.check or args.strict:
        problems, old = check(args.root), stale(args.root)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("run `python benchmarks/report.py` to rewrite the blocks from the JSON", file=sys.stderr)
        if old and args.strict:
            print(*(f"stale: {s}" for s in old), sep="\n", file=sys.stderr)
            print(f"{len(old)} stale rows are shown with a caveat: rerun each as named, then "
                  "`python benchmarks/report.py`", file=sys.stderr)
        elif old:
            print(f"{len(old)} stale rows are shown with a caveat (`python benchmarks/report.py --strict` lists "
                  "their reruns)", file=sys.stderr)
        return 1 if problems or (old and args.strict) else 0
    for doc in rewrite(args.root):
        print(f"wrote {args.root / doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

