"""Serving overhead: in-process call vs gRPC over loopback, a raw grpcio echo as the floor, throughput.

    python benchmarks/serve.py [--models digits resnet18] [--seconds 5]

Per model: kiln.load(...).run p50/p99 in this process; the same request through `kiln serve` (program
protocol for digits, v2 tensors for ResNet-18); a bare grpcio server echoing the same request bytes; the
added latency (gRPC p50 - in-process p50) against the echo p50; requests/s with 1, 4 and 16 concurrent
client threads for --seconds each, with --workers 1 (one runtime instance: calls serialize, like a lock)
and --workers 2 (one instance per worker); and NVIDIA's perf_analyzer against the --workers 2 server over
gRPC (KServe v2, the tool Triton users measure servers with: throughput, p50/p99 and the server's own
queue/compute split from ModelStatistics at concurrency 1-8; fetched by benchmarks/perf_analyzer.py).
Writes benchmarks/serve.json, and through benchmarks/report.py the figures of RESULTS.md and README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
WORK = ROOT / "benchmarks" / "work" / "serve"

import kiln  # noqa: E402
from benchmarks import report  # noqa: E402
from kiln.client import connect  # noqa: E402

ECHO_SERVER = """
import sys, grpc
from concurrent import futures
h = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
s = grpc.server(futures.ThreadPoolExecutor(8))
s.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("echo.Echo", {"Echo": h})])
port = s.add_insecure_port("127.0.0.1:0"); s.start(); print(port, flush=True); s.wait_for_termination()
"""


def artifact_for(name: str) -> Path:
    """Publish the example with the onnxruntime candidate only (serving cost does not depend on tuning)."""
    env = {**os.environ, "KILN_HOME": str(WORK / "home"), "KILN_STORE": str(WORK / "store"),
           "PREFECT_HOME": str(WORK / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    example = ROOT / "examples" / name
    if not (example / "model.onnx").is_file():
        script = "train.py" if (example / "train.py").is_file() else "make_model.py"
        subprocess.run([sys.executable, str(example / script)], check=True)
    proc = subprocess.run([str(BIN / "kiln"), "optimize", str(example), "--candidates", "onnxruntime", "--json"],
                          env=env, capture_output=True, text=True, check=True)
    manifest = json.loads(proc.stdout)
    return WORK / "store" / manifest["name"] / manifest["id"]


def percentiles(call, n: int) -> tuple[float, float]:
    for _ in range(min(50, n)):
        call()
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def interleaved(call, payload: bytes, calls: int, rounds: int = 5) -> tuple[tuple, tuple]:
    """kiln and the echo measured in alternating rounds, so both see the same machine noise."""
    import grpc

    echo, address = start([sys.executable, "-c", ECHO_SERVER])
    try:
        with grpc.insecure_channel(address) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            stub = ch.unary_unary("/echo.Echo/Echo")
            kiln_rounds, echo_rounds = [], []
            for _ in range(rounds):
                kiln_rounds.append(percentiles(call, max(10, calls // rounds)))
                echo_rounds.append(percentiles(lambda: stub(payload), max(10, calls // rounds)))
    finally:
        echo.terminate()
        echo.wait(timeout=30)
    med = lambda rs: (float(np.median([r[0] for r in rs])), float(np.median([r[1] for r in rs])))  # noqa: E731
    return med(kiln_rounds), med(echo_rounds)


def throughput(call, clients: int, seconds: float) -> float:
    count = [0] * clients
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            call()
            count[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / seconds


def start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    return proc, line.rsplit(" ", 1)[-1] if line.startswith("serving") else f"127.0.0.1:{line}"


def perf_analyzer(address: str, model: str, feed: dict[str, np.ndarray], concurrency: str = "1:8") -> list[dict]:
    """perf_analyzer over gRPC with the benchmark's own input; one row per concurrency level (latency in us)."""
    from benchmarks.perf_analyzer import install

    WORK.mkdir(parents=True, exist_ok=True)
    data, out = WORK / f"{model}-input.json", WORK / f"{model}-perf.csv"
    data.write_text(json.dumps({"data": [{k: {"content": v.reshape(-1).tolist(), "shape": list(v.shape)}
                                          for k, v in feed.items()}]}))
    proc = subprocess.run([*install(), "-m", model, "-u", address, "-i", "grpc", "--concurrency-range", concurrency,
                           "--measurement-interval", "2000", "--input-data", str(data), "-f", str(out)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"perf_analyzer failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(out) as f:
        return [{"concurrency": int(r["Concurrency"]), "infer_per_s": float(r["Inferences/Second"]),
                 "p50_us": float(r["p50 latency"]), "p99_us": float(r["p99 latency"]),
                 "server_queue_us": float(r["Server Queue"]), "server_infer_us": float(r["Server Compute Infer"]),
                 "server_io_us": float(r["Server Compute Input"]) + float(r["Server Compute Output"])}
                for r in csv.DictReader(f)]


def bench(name: str, seconds: float, calls: int, threads: int | None = None) -> dict:
    folder = artifact_for(name)
    local = kiln.load(folder)
    spec = local.inputs[0]
    x = np.random.default_rng(0).random(spec.shape).astype(spec.dtype) * 16
    feed = {spec.name: x}
    inproc = percentiles(lambda: local.run(feed), calls)
    result = {"model": name, "backend": local.backend, "inprocess_us": inproc, "grpc": {}, "throughput": {}}
    for workers in (1, 2):
        proc, address = start([str(BIN / "kiln"), "serve", str(folder), "--port", "0", "--http-port", "0",
                               "--workers", str(workers),
                               "--max-message-mb", "64", *(["--threads", str(threads)] if threads else [])])
        try:
            client = connect(address, artifact=folder)
            if client.Request is not None:
                request = client.Request(pixels=x.reshape(-1).tolist())
                payload = request.SerializeToString()
                call = lambda c=client, r=request: c.predict(r)  # noqa: E731
            else:
                from kiln.serving import tensors

                req = client._v2["ModelInferRequest"]()
                tensors.encode_inputs(req, feed)
                payload = req.SerializeToString()
                call = lambda c=client: c.infer(feed)  # noqa: E731
            if workers == 1:
                result["request_bytes"] = len(payload)
                result["grpc"], result["echo_us"] = interleaved(call, payload, calls)
            result["throughput"][workers] = {c: throughput(call, c, seconds) for c in (1, 4, 16)}
            client.close()
            if workers == 2:
                result["perf_analyzer"] = perf_analyzer(address, local.manifest.name, feed)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result["added_us"] = result["grpc"][0] - inproc[0]
    result["added_vs_echo"] = result["added_us"] / result["echo_us"][0]
    print(json.dumps(result), flush=True)
    return result


def write(results: list[dict], command: str) -> None:
    """Save serve.json and let report.py write every figure that comes from it."""
    from benchmarks.perf_analyzer import WHEEL

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    (ROOT / "benchmarks" / "serve.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "machine": {"cpu": cpu, "cores": os.cpu_count()}, "command": command,
         "perf_analyzer": WHEEL.partition("==")[2], "results": results}, indent=1) + "\n")
    report.rewrite()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["digits", "resnet18"], choices=["digits", "resnet18"])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls for the latency percentiles")
    parser.add_argument("--threads", type=int, default=None, help="kiln serve --threads (default: its own)")
    args = parser.parse_args()
    results = [bench(m, args.seconds, args.calls if m == "digits" else max(50, args.calls // 20), args.threads)
               for m in args.models]
    write(results, " ".join(["python benchmarks/serve.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
