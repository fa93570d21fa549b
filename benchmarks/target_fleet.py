"""The bar `target-fleet` (issue 32), checked end to end on this host and on an emulated AVX2 CPU.

    python benchmarks/target_fleet.py                  # ~10 minutes: 6 of tuning for x86-64-v3, 2 for the host

1. `kiln optimize examples/encoder/model.onnx --target x86-64-v3 --candidates onnxruntime,ort-int8-dynamic,tvm,
   tvm-int8-dynamic --tune-time 6m --range 'cosine>=0.99' --json` (a fresh KILN_HOME): exit 0; the published build's
   target is x86-64-v3; at least one TVM build was made, and none (the artifact's or kiln's build cache's) holds an
   AVX-512 or VNNI instruction (objdump: zmm, opmask, EVEX-only xmm/ymm16-31, vpdpbusd/vpdpwssd); the artifact gives
   the same outputs under `qemu-x86_64 -cpu EPYC-Milan` (AMD Zen 3: AVX2, no AVX-512) as on this host.
2. On an AVX-512 host, a host-target artifact published with `--candidates tvm-int8-dynamic --select
   tvm-int8-dynamic --tune-time 2m --range 'cosine>=0.99'` (the strict default ranges would refuse int8), loaded
   on the same emulated CPU, is refused with a message naming the target
   or a missing flag: no SIGILL, no core dump.
Writes benchmarks/target_fleet.json: each condition, whether it held, and what showed it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "work" / "target_fleet"
CPU = "EPYC-Milan"

# run natively or under qemu: the artifact loaded by kiln.load, on inputs derived from its manifest (seeded), its
# outputs or the refusal printed as JSON; a SIGILL kills the process (exit -4) before anything is printed
LOAD = """
import json, sys
import numpy as np
import kiln
from kiln.errors import KilnError
try:
    model = kiln.load(sys.argv[1])
except KilnError as exc:
    print(json.dumps({"refused": exc.render()}))
    raise SystemExit(0)
rng = np.random.default_rng(0)
feed = {s.name: rng.standard_normal([max(d, 1) for d in s.shape]).astype(s.dtype) for s in model.manifest.inputs}
out = model.run(feed)
print(json.dumps({"build": model.manifest.builds[0].target.name if model.manifest.builds else None,
                  "outputs": {k: np.asarray(v).tolist() for k, v in out.items()}}))
"""


def load(artifact: Path, cpu: str | None) -> dict:
    """kiln.load of `artifact` in a new process (under `qemu-x86_64 -cpu CPU` when given): what it printed, or how
    it died."""
    cmd = [*(["qemu-x86_64", "-cpu", cpu] if cpu else []), sys.executable, "-c", LOAD, str(artifact)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd="/tmp",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {"died": proc.returncode, "stderr": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_diff(a: dict, b: dict) -> float | None:
    import numpy as np

    if "outputs" not in a or "outputs" not in b:
        return None
    return max(float(np.max(np.abs(np.asarray(a["outputs"][k]) - np.asarray(b["outputs"][k])))) for k in a["outputs"])


def check(conditions: list[dict], what: str, held: bool, shown: object) -> None:
    conditions.append({"condition": what, "held": bool(held), "shown": shown})
    print(f"{'PASS' if held else 'FAIL'}  {what}: {shown}", flush=True)


def artifact_of(home: Path, out: dict) -> Path:
    return home / "store" / out["name"] / out["id"]


def main() -> None:
    from benchmarks.int8_vs_ort import inputs, machine, optimize_fresh
    from benchmarks.targets import avx512_instructions
    from kiln.runtime.cpu_flags import this_cpu

    encoder, _ = inputs("encoder")
    conditions: list[dict] = []
    home = WORK / "v3"
    proc, seconds, shown = optimize_fresh(home, [str(encoder), "--target", "x86-64-v3", "--candidates",
                                                 "onnxruntime,ort-int8-dynamic,tvm,tvm-int8-dynamic", "--tune-time",
                                                 "6m", "--range", "cosine>=0.99"])
    runs = [{"command": shown, "exit": proc.returncode, "seconds": seconds, "stderr": proc.stderr[-1500:]}]
    check(conditions, "x86-64-v3: exit 0", proc.returncode == 0, proc.returncode or "0")
    if proc.returncode == 0:
        out = json.loads(proc.stdout)
        runs[0].update(selected=out["selected"], speedup=out["speedup_vs_baseline"])
        build = out["builds"][0]
        check(conditions, "the published build's target is x86-64-v3", build["target"]["name"] == "x86-64-v3",
              f"{build['target']['name']} (LLVM CPU {build['target']['mcpu']}), selected {out['selected']}")
        libraries = sorted((home / "cache" / "tvm").rglob("*.so")) + sorted((home / "store").rglob("*.so"))
        counts = {str(p.relative_to(home)): avx512_instructions(p) for p in libraries}
        check(conditions, "at least one TVM build was made", bool(libraries), f"{len(libraries)} libraries")
        check(conditions, "no AVX-512/VNNI instruction in any TVM build (artifact and build cache)",
              libraries and not any(counts.values()), counts)
        folder = artifact_of(home, out)
        here, there = load(folder, None), load(folder, CPU)
        diff = max_diff(here, there)
        check(conditions, f"the artifact gives the same outputs under qemu -cpu {CPU} as on this host",
              diff is not None and diff <= 1e-5, {"max_abs_diff": diff, "host": {k: v for k, v in here.items()
                                                                                if k != "outputs"},
                                                  CPU: {k: v for k, v in there.items() if k != "outputs"}})

    if "avx512f" in this_cpu().flags:
        home = WORK / "host-tvm-int8"
        proc, seconds, shown = optimize_fresh(home, [str(encoder), "--candidates", "tvm-int8-dynamic", "--select",
                                                     "tvm-int8-dynamic", "--tune-time", "2m", "--range",
                                                     "cosine>=0.99"])
        runs.append({"command": shown, "exit": proc.returncode, "seconds": seconds, "stderr": proc.stderr[-1500:]})
        check(conditions, "host tvm-int8-dynamic: exit 0", proc.returncode == 0, proc.returncode or "0")
        if proc.returncode == 0:
            out = json.loads(proc.stdout)
            there = load(artifact_of(home, out), CPU)
            refusal = there.get("refused", "")
            check(conditions, f"the host-target artifact is refused under qemu -cpu {CPU} by name: no SIGILL",
                  "died" not in there and "was built for host" in refusal and "lacks avx512" in refusal, there)
    else:
        check(conditions, "host-target artifact refused under emulation (needs an AVX-512 host)", True,
              "not applicable: this host has no AVX-512")
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/target_fleet.py",
              "runs": runs, "conditions": conditions, "held": all(c["held"] for c in conditions)}
    (ROOT / "benchmarks" / "target_fleet.json").write_text(json.dumps(result, indent=1) + "\n")
    print("bar target-fleet " + ("holds" if result["held"] else "does NOT hold"))
    raise SystemExit(0 if result["held"] else 1)


if __name__ == "__main__":
    main()
