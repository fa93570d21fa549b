"""The same models optimized for this host and for an AVX2 fleet (`--target x86-64-v3`) on one machine (issue 32).

    python benchmarks/targets.py                                  # encoder, minilm-l6, resnet50-thin; 6 minutes each
    python benchmarks/targets.py --models encoder --minutes 2 --targets host x86-64-v3

Each run is `kiln optimize MODEL --target T --candidates onnxruntime,<its ort int8 rows>,tvm,<its tvm int8 row>
--tune-time Nm --range R --json` in a fresh KILN_HOME (the models, data and ranges of benchmarks/int8_vs_ort.py).
A row records the target's selection, its confirmed speed-up over onnxruntime fp32 on this host (for x86-64-v3
the host stands in for the AVX2 CPU: same code, this host's speed), the selected candidate's accuracy, the CPU
flags the published build requires, and how many AVX-512/VNNI instructions (zmm or opmask registers, EVEX-only
xmm16-31/ymm16-31, vpdpbusd/vpdpwssd: `objdump -d`) each TVM build of the run holds (the artifact's and the
build cache's): none is the point of an x86-64-v3 build. Writes benchmarks/targets.json and its RESULTS.md table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "work" / "targets"
AVX512 = re.compile(r"%zmm\d+|%k[1-7]\b|%[xy]mm(?:1[6-9]|2\d|3[01])\b|vpdpbusds?|vpdpwssds?")


def avx512_instructions(library: Path) -> int:
    """Instructions of `library` that need AVX-512 or VNNI (a CPU without them dies with SIGILL on each)."""
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                          check=True).stdout
    return sum(1 for line in code.splitlines() if AVX512.search(line))


def run(model: str, target: str, minutes: float) -> dict:
    from benchmarks.int8_vs_ort import MODELS, inputs, optimize_fresh

    spec = MODELS[model]
    path, data = inputs(model)
    home = WORK / f"{model}-{target.replace('/', '_')}-{minutes:g}m"
    proc, seconds, shown = optimize_fresh(home, [str(path), *data, "--target", target, "--candidates",
                                                 ",".join(("onnxruntime", *spec["ort"], "tvm", spec["tvm"])),
                                                 "--tune-time", f"{minutes:g}m", "--range", spec["range"]])
    row = {"model": model, "target": target, "minutes": minutes, "exit": proc.returncode, "seconds": seconds,
           "kiln_command": shown,
           "command": f"python benchmarks/targets.py --models {model} --targets {target} --minutes {minutes:g}"}
    if proc.returncode != 0:
        return {**row, "error": proc.stderr.strip().splitlines()[-1:]}
    out = json.loads(proc.stdout)
    rows = {c["name"]: c for c in out["candidates"]}
    chosen = rows[out["selected"]]
    build = (out.get("builds") or [{}])[0]
    conf = out.get("confirmation") or {}
    libraries = sorted((home / "cache" / "tvm").rglob("*.so")) + sorted((home / "store").rglob("model.so"))
    row.update(selected=out["selected"], backend=out["backend"], mcpu=(build.get("target") or {}).get("mcpu"),
               requires=build.get("requires", []), judged=build.get("judged"),
               speedup=(conf.get("speedup") or {}).get("value", out["speedup_vs_baseline"]),
               speedup_low=(conf.get("speedup") or {}).get("low"), speedup_high=(conf.get("speedup") or {}).get("high"),
               accuracy={k: m["value"] for k, m in chosen.get("metrics", {}).items()},
               p50_ms={n: r["latency_ms"]["p50"] for n, r in rows.items() if r.get("latency_ms")},
               not_timed=not_timed(out["candidates"]),
               tvm_builds=len(libraries),
               avx512_instructions={str(p.relative_to(home)): avx512_instructions(p) for p in libraries})
    return row


def not_timed(candidates: list[dict]) -> dict[str, str]:
    """Why each row without a latency has none (its first reason: a build failure, an early stop, ...)."""
    return {c["name"]: (c.get("reasons") or ["no reason given"])[0] for c in candidates if not c.get("latency_ms")}


def machine() -> dict:
    from benchmarks.int8_vs_ort import machine as host

    return host()


def main() -> None:
    from benchmarks.int8_vs_ort import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--targets", nargs="+", default=["host", "x86-64-v3"])
    parser.add_argument("--minutes", type=float, default=6)
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "targets.json"
    here = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    results = {**here, "runs": []}
    if out.is_file():  # rows of other models/targets stay, each with the machine and date it was measured on
        old = json.loads(out.read_text())
        results["runs"] = [{"machine": old["machine"], "date": old["date"], **r} for r in old["runs"]]
    for model in args.models:
        for target in args.targets:
            row = {**here, **run(model, target, args.minutes)}
            results["runs"] = [r for r in results["runs"] if (r["model"], r["target"]) != (model, target)]
            results["runs"].append(row)
            print(json.dumps({k: row.get(k) for k in ("model", "target", "exit", "selected", "speedup",
                                                      "avx512_instructions")}), flush=True)
            out.write_text(json.dumps(results, indent=1))
    from benchmarks import report

    report.rewrite()


if __name__ == "__main__":
    main()
