"""Serving variable-length requests with and without dynamic batching: all-MiniLM-L6-v2 over KServe v2 gRPC.

    python benchmarks/batching.py [--seconds 10] [--delay-us 2000]

The artifact: all-MiniLM-L6-v2 (Optimum export) optimized by `kiln optimize` from a program that declares the
batch range (dims = {"batch_size": (1, 8)}) and the pad values (padding = {"input_ids": 0, "attention_mask":
0}), on benchmarks/natural_lengths.py's 160 real sentences at their own lengths. One `kiln serve` without
batching and one with `--max-queue-delay-us D --max-batch 8` run side by side; at each concurrency (1, 4, 8, 16
client threads of tritonclient's gRPC client, each sending one sentence at a time, lengths drawn from the real
ones) the two are measured in alternating rounds. Reported: requests/s, p50 and p99 latency seen by the
client, and the server's executions per request (ModelStatistics). Writes benchmarks/batching.json and,
through benchmarks/report.py, its table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
WORK = ROOT / "benchmarks" / "work" / "batching"
CONCURRENCY = (1, 4, 8, 16)
ROUNDS = 2
CANDIDATES = "onnxruntime,ort-int8-fused-smooth"  # what natural_lengths.py saw ship; else onnxruntime
PROGRAM = '''
import kiln


class Program(kiln.ModelProgram):
    name = "minilm-l6-batched"
    dims = {"batch_size": (1, 8)}
    padding = {"input_ids": 0, "attention_mask": 0}
    dataset = kiln.Dataset(path="real.parquet")
    metrics = [kiln.metrics.cosine(at_least=0.99, output="sentence_embedding")]
'''


def artifact(models: Path) -> Path:
    """The program folder (model, the real sentences, program.py) optimized once; its artifact folder."""
    from benchmarks.natural_lengths import write_parquet

    program = WORK / "program"
    shutil.rmtree(WORK, ignore_errors=True)
    program.mkdir(parents=True)
    os.link(models / "minilm-l6" / "model.onnx", program / "model.onnx")
    write_parquet("minilm-l6", models, ["input_ids", "attention_mask"], program)
    (program / "program.py").write_text(PROGRAM)
    env = {**os.environ, "KILN_HOME": str(WORK / "home"), "KILN_STORE": str(WORK / "store"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([str(BIN / "kiln"), "optimize", str(program), "--candidates", CANDIDATES, "--trials", "0",
                           "--json"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"kiln optimize exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    manifest = json.loads(proc.stdout)
    print(f"published {manifest['selected']} ({manifest['speedup_vs_baseline']:.2f}x), profile "
          f"{manifest['profile']['dims']}", flush=True)
    return WORK / "store" / manifest["name"] / manifest["id"], manifest


def serve(folder: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([str(BIN / "kiln"), "serve", str(folder), "--port", "0", "--http-port", "-1",
                             "--no-log-requests", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


def load(address: str, sentences: list[dict[str, np.ndarray]], clients: int, seconds: float, seed: int
         ) -> dict[str, float]:
    """`clients` threads, each sending one sentence at a time for `seconds`: requests/s and latency percentiles."""
    import tritonclient.grpc as tgrpc

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        c = tgrpc.InferenceServerClient(address)
        rng = np.random.default_rng(seed * 100 + k)
        mine = []
        while time.perf_counter() < stop:
            feed = sentences[int(rng.integers(len(sentences)))]
            inputs = []
            for name, arr in feed.items():
                inp = tgrpc.InferInput(name, list(arr.shape), "INT64")
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            t0 = time.perf_counter()
            c.infer("minilm-l6-batched", inputs, outputs=[tgrpc.InferRequestedOutput("sentence_embedding")])
            mine.append((time.perf_counter() - t0) * 1e3)
        c.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    arr = np.asarray(latencies)
    return {"rps": len(arr) / took, "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "requests": int(len(arr))}


def executions(address: str) -> tuple[int, int]:
    import tritonclient.grpc as tgrpc

    stats = tgrpc.InferenceServerClient(address).get_inference_statistics("minilm-l6-batched", as_json=True)
    s = stats["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def main() -> None:
    import pandas as pd

    from benchmarks import report
    from benchmarks.compile_vs_ort import machine
    from benchmarks.real_models import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--delay-us", type=int, default=2000)
    args = parser.parse_args()
    folder, manifest = artifact(prepare(["minilm-l6"]))
    frame = pd.read_parquet(WORK / "program" / "real.parquet")
    sentences = [{k: np.asarray(frame[k][i], np.int64)[None] for k in ("input_ids", "attention_mask")}
                 for i in range(len(frame))]
    servers = {"off": serve(folder), "on": serve(folder, "--max-queue-delay-us", str(args.delay_us),
                                                 "--max-batch", "8")}
    rows = []
    try:
        for clients in CONCURRENCY:
            got: dict[str, list[dict]] = {"off": [], "on": []}
            for r in range(ROUNDS):
                for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    before = executions(servers[mode][1])
                    result = load(servers[mode][1], sentences, clients, args.seconds / ROUNDS, seed=r)
                    after = executions(servers[mode][1])
                    result["executions_per_request"] = (after[1] - before[1]) / max(1, after[0] - before[0])
                    got[mode].append(result)
            for mode, results in got.items():
                total = sum(x["requests"] for x in results)
                rows.append({"clients": clients, "batching": mode,
                             "rps": round(sum(x["rps"] for x in results) / len(results), 1),
                             "p50_ms": round(float(np.mean([x["p50_ms"] for x in results])), 2),
                             "p99_ms": round(float(np.mean([x["p99_ms"] for x in results])), 2),
                             "executions_per_request": round(float(np.mean([x["executions_per_request"]
                                                                            for x in results])), 3),
                             "requests": total})
                print(rows[-1], flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    info = machine()
    (ROOT / "benchmarks" / "batching.json").write_text(json.dumps({
        "cpu": info["cpu"], "cores": info["cores"], "date": time.strftime("%Y-%m-%d"), "seconds": args.seconds,
        "delay_us": args.delay_us, "selected": manifest["selected"], "rounds": ROUNDS,
        "command": f"python benchmarks/batching.py --seconds {args.seconds:g} --delay-us {args.delay_us}",
        "rows": rows}, indent=1) + "\n")
    report.rewrite()


if __name__ == "__main__":
    main()
