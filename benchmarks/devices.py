"""Tuning on a pool of devices (issue 33): the encoder tuned for the same time with 1 device and with 2 devices
under one key, each device pinned to one core, TVM's tracker on loopback.

    python benchmarks/devices.py [--minutes 10]      # ~2 x (minutes + 2)

Each run: `kiln optimize examples/encoder/model.onnx --device KEY@127.0.0.1:PORT --candidates onnxruntime,tvm
--tune-time Nm --json` in a fresh KILN_HOME (no records from the other run: both devices have the same
fingerprint). Reported per run: trials the devices measured (and how many failed there), the tuner's estimate,
and the tvm and onnxruntime p50 on the device (the selection rounds, same run, interleaved). The optimizer's
builder runs on the same two cores as the devices, so a second device also competes with the builds: on 2 cores
this measures the pool's mechanics more than its scaling. Writes benchmarks/devices.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "work" / "devices"
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_registered(port: int, key: str, count: int) -> None:
    from tvm import rpc

    from kiln.device.client import devices

    deadline = time.monotonic() + 60
    while len(devices(rpc.connect_tracker("127.0.0.1", port), key)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} device(s) under {key} did not register")
        time.sleep(0.2)


def run(port: int, cores: list[str], minutes: float, model: Path) -> dict:
    key = f"pool{len(cores)}"
    devices = [subprocess.Popen(["taskset", "-c", c, str(BIN / "kiln"), "device", "--tracker", f"127.0.0.1:{port}",
                                 "--key", key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True) for c in cores]
    try:
        wait_registered(port, key, len(cores))
        from benchmarks.int8_vs_ort import optimize_fresh

        proc, seconds, shown = optimize_fresh(WORK / key, [str(model), "--device", f"{key}@127.0.0.1:{port}",
                                                           "--candidates", "onnxruntime,tvm", "--tune-time",
                                                           f"{minutes:g}m", "--name", f"encoder-{key}"])
    finally:
        for d in devices:
            os.killpg(d.pid, signal.SIGTERM)
            d.wait(30)
    row = {"devices": len(cores), "cores": cores, "minutes": minutes, "exit": proc.returncode, "seconds": seconds,
           "kiln_command": shown}
    if proc.returncode != 0:
        row["stderr"] = proc.stderr[-1500:]
        return row
    out = json.loads(proc.stdout)
    rows = {c["name"]: c for c in out["candidates"]}
    tuning = out["tuning"] or {}
    p50 = {n: (rows[n]["latency_ms"] or {}).get("p50") for n in ("onnxruntime", "tvm") if n in rows}
    row.update(selected=out["selected"], trials=tuning.get("trials_run"), failed=tuning.get("failed_trials"),
               device_failed=tuning.get("device_failed_trials"), estimated_ms=tuning.get("estimated_ms"),
               tasks=tuning.get("tasks"), p50_ms=p50, measured=out["device"]["measurements"],
               device_cpu=out["device"]["cpu"], device_cores=out["device"]["cores"],
               tvm_vs_onnxruntime=(p50["tvm"] / p50["onnxruntime"]) if p50.get("tvm") and p50.get("onnxruntime")
               else None, tvm_reasons=rows.get("tvm", {}).get("reasons"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    from benchmarks.int8_vs_ort import inputs, machine

    model, _ = inputs("encoder")
    port = free_port()
    tracker = subprocess.Popen([str(BIN / "python"), "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(3)
        runs = []
        for cores in (["1"], ["0", "1"]):
            print(f"{len(cores)} device(s), {args.minutes:g} min of tuning ...", flush=True)
            runs.append(run(port, cores, args.minutes, model))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        os.killpg(tracker.pid, signal.SIGTERM)
    out = {"date": datetime.now(UTC).date().isoformat(), "machine": machine(),
           "command": f"python benchmarks/devices.py --minutes {args.minutes:g}", "runs": runs}
    (ROOT / "benchmarks" / "devices.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
