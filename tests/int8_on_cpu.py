"""Run as a script (under `qemu-x86_64 -cpu MODEL` by test_int8_cpus): build kiln's int8 candidates in this
process on the sensitive MLP, with accuracy-aware fallback, and print what the CPU and each row said as JSON.

Both int8 schemes in one emulated process (starting Python and onnxruntime under qemu is most of the cost):
first with the scheme kiln picks for this CPU ("auto"), then with KILN_INT8_ISA naming another CPU's ISA
("forced": the weights that ISA gets, run on this CPU's kernels). BuildContext reads KILN_INT8_ISA through
kiln's settings each time one is made, so setting it between the two is the same as a new process with it set.

In-process on purpose: qemu-user emulates this process only, and kiln's isolation children would run on the
host's CPU."""

import json
import os
import sys
from pathlib import Path

import numpy as np

from kiln.cpu import detected_int8_isa
from kiln.optimize.candidates import BuildContext, get
from kiln.optimize.quantize.accuracy_aware import AccuracyCheck
from kiln.program.metrics import cosine

import onnx_models


def build(model: Path, feeds: list[dict], out: Path, names: tuple[str, ...]) -> dict:
    rows = {}
    for name in names:
        folder = out / name
        folder.mkdir(parents=True)
        ctx = BuildContext(model=model, prepared=model, out_dir=folder, calibration=feeds)
        ctx.accuracy = AccuracyCheck.of([cosine(at_least=0.99)], model, feeds, ctx.fallback_margin)
        built = get(name).build(ctx)
        rows[name] = {"scheme": ctx.int8.label, "isa": built.settings.int8_isa,
                      "rounds": [{"kept_fp32": a.settings.kept_fp32, "check": a.settings.calibration_check}
                                 for a in built.attempts if a.settings.kept_fp32]}  # not QDQ's compute-only retry
    return rows


def main(out: Path, forced_isa: str, forced: tuple[str, ...]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    model = onnx_models.sensitive_mlp(out / "sensitive.onnx")
    x = np.random.default_rng(0).standard_normal((20, 1, 64)).astype(np.float32)
    feeds = [{"x": a} for a in x]
    os.environ.pop("KILN_INT8_ISA", None)
    result = {"detected": detected_int8_isa(),
              "auto": build(model, feeds, out / "auto", ("ort-int8-dynamic", "ort-int8-static"))}
    os.environ["KILN_INT8_ISA"] = forced_isa
    result["forced"] = build(model, feeds, out / forced_isa, forced)
    return result


if __name__ == "__main__":
    # int8_on_cpu.py OUT FORCED_ISA CANDIDATE...: the candidates to build again with KILN_INT8_ISA=FORCED_ISA
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2], tuple(sys.argv[3:]))))
