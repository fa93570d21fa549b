"""Run as a script (under `qemu-x86_64 -cpu MODEL` by test_int8_cpus): build kiln's int8 candidates in this
process on the sensitive MLP, with accuracy-aware fallback, and print what the CPU and each row said as JSON.

In-process on purpose: qemu-user emulates this process only, and kiln's isolation children would run on the
host's CPU."""

import json
import sys
from pathlib import Path

import numpy as np

from kiln.cpu import detected_int8_isa
from kiln.optimize.candidates import BuildContext, get
from kiln.optimize.quantize.accuracy_aware import AccuracyCheck
from kiln.program.metrics import cosine

import onnx_models


def main(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    model = onnx_models.sensitive_mlp(out / "sensitive.onnx")
    x = np.random.default_rng(0).standard_normal((20, 1, 64)).astype(np.float32)
    feeds = [{"x": a} for a in x]
    result = {"detected": detected_int8_isa(), "candidates": {}}
    for name in ("ort-int8-dynamic", "ort-int8-static"):
        folder = out / name
        folder.mkdir(parents=True)
        ctx = BuildContext(model=model, prepared=model, out_dir=folder, calibration=feeds)
        ctx.accuracy = AccuracyCheck.of([cosine(at_least=0.99)], model, feeds, ctx.fallback_margin)
        built = get(name).build(ctx)
        result["candidates"][name] = {
            "scheme": ctx.int8.label, "isa": built.settings.int8_isa,
            "rounds": [{"kept_fp32": a.settings.kept_fp32, "check": a.settings.calibration_check}
                       for a in built.attempts]}
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
