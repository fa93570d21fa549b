"""Where a compiled model's time goes, end to end: each call the Relax VM makes (kernels, allocations, reshapes,
copies), timed in place, beside the end-to-end latency.

    python benchmarks/vm_profile.py MODULE.so --shape hidden=1,128,256 [--runs 50]

TVM 0.27 dropped the VM profiler; the VM's instrument hook (called before and after every Call instruction)
times each call instead. The gap between the calls' sum and the end-to-end time is the VM's own work (its
interpreter, argument packing) plus the hook's; the calls' sum against the tuner's estimate shows what
running in sequence costs each kernel (cold caches, weights from memory).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def profile(module: Path, feed: list[np.ndarray], runs: int = 50, threads: int | None = None) -> dict:
    """{"e2e_ms": median end-to-end without the hook, "calls": {symbol: (us per run, calls per run)}, "sum_ms"};
    threads: TVM's (default: every CPU, as kiln runs a model)."""
    # TVM's own default is half the logical CPUs (it assumes hyper-threads): 1 of these machines' 2, which
    # profiled ResNet-50-thin at 7.7 ms instead of the 3.6 ms kiln's runtime runs it at
    os.environ.setdefault("TVM_NUM_THREADS", str(threads or os.cpu_count()))
    import tvm

    dev = tvm.cpu()
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(module)), dev)
    args = [tvm.runtime.tensor(x, dev) for x in feed]
    main = vm["main"]
    for _ in range(5):
        main(*args)
    e2e = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        main(*args)
        e2e.append((time.perf_counter_ns() - t0) / 1e3)
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    started = [0]

    def hook(func, symbol, before, ret, *rest):
        now = time.perf_counter_ns()
        if before:
            started[0] = now
        else:
            total[symbol] += (now - started[0]) / 1e3
            count[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: go on

    vm.set_instrument(tvm.runtime.convert(hook) if hasattr(tvm.runtime, "convert") else hook)
    hooked = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        main(*args)
        hooked.append((time.perf_counter_ns() - t0) / 1e3)
    calls = {s: (total[s] / runs, count[s] // runs) for s in sorted(total, key=lambda s: -total[s])}
    return {"e2e_ms": float(np.median(e2e)) / 1e3, "hooked_ms": float(np.median(hooked)) / 1e3,
            "sum_ms": sum(us for us, _ in calls.values()) / 1e3, "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", type=Path)
    parser.add_argument("--shape", action="append", default=[], help="name=d0,d1,... in the inputs' order")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    feed = [rng.standard_normal([int(d) for d in s.split("=")[1].split(",")]).astype(np.float32) for s in args.shape]
    got = profile(args.module, feed, args.runs)
    print(f"end to end {got['e2e_ms']:.3f} ms; with the hook {got['hooked_ms']:.3f} ms; "
          f"calls' sum {got['sum_ms']:.3f} ms")
    print(f"{'call':60s} {'us/run':>9s} {'calls':>6s}")
    for symbol, (us, n) in list(got["calls"].items())[:args.top]:
        print(f"{symbol:60s} {us:9.1f} {n:6d}")


if __name__ == "__main__":
    main()
