"""The functions a device serves over TVM's RPC: describe this machine, time candidates on it.

`python -m kiln.device --tracker HOST:PORT --key KEY` (or `kiln device`) starts TVM's RPC server (it registers with
the tracker under KEY, as any TVM device does) with kiln's own functions registered in it: TVM's RPC calls global
functions by name on the server, so the optimizer asks this machine to describe itself and to time candidates on
it, in kiln's interleaved rounds (kiln.runtime.latency), with the same runners `kiln.load` uses. It imports TVM's
runtime only (no compiler, no optimizer), so the runtime image can be a device:
`docker run --network host --entrypoint python IMAGE -m kiln.device --tracker HOST:PORT --key KEY`.

RPC has no authentication: whoever reaches the port can upload and run code. The server binds to loopback unless
told otherwise, and says so when it is not.

Functions (all take and return JSON text; files travel through the server's work folder, `upload`/`download`):
- `kiln.device.describe()`: CPU flags (kiln.runtime.cpu_flags' vocabulary), the CPU's name, the cores in this
  process's affinity mask, TVM/onnxruntime/kiln versions, and what it has served so far.
- `kiln.device.measure(request)`: open each candidate (`backend`, `path` in the work folder, settings, tensor
  specs), run each on every feed of `feeds` (an .npz of feed0/NAME, feed1/NAME, ...) writing the outputs to
  `outputs` (an .npz the client downloads), then time them together in interleaved rounds, each timed call a pass
  through the feeds `timed` (kiln.runtime.latency.through_inputs: the optimizer's own protocol): the rounds and
  each input's times.
"""

from __future__ import annotations

import json
import os
import platform
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kiln.runtime.cpu_flags import this_cpu
from kiln.runtime.latency import through_inputs

DESCRIBE = "kiln.device.describe"
MEASURE = "kiln.device.measure"
COUNTS = "kiln-device-counts.json"  # in the device's state folder: sessions are served in forked processes


def cores() -> int:
    """The cores this process may run on (its affinity mask: `taskset -c 1` gives 1)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def versions() -> dict[str, str]:
    import onnxruntime
    import tvm

    from kiln import __version__

    return {"tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__, "kiln": __version__}


class Counts:
    """What this device served (timing rounds, candidates opened), kept in a file: each RPC session runs in a
    process of its own."""

    def __init__(self, folder: Path):
        self.path = folder / COUNTS

    def read(self) -> dict[str, int]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"sessions": 0, "measurements": 0, "rounds": 0}

    def add(self, **more: int) -> None:
        now = self.read()
        for k, v in more.items():
            now[k] = now.get(k, 0) + v
        tmp = self.path.with_suffix(f".{os.getpid()}")
        tmp.write_text(json.dumps(now))
        tmp.replace(self.path)


def describe(state: Path) -> dict[str, Any]:
    flags = this_cpu()
    return {"cpu": cpu_name(), "flags": sorted(flags.flags), "flags_from": flags.source, "cores": cores(),
            "machine": platform.machine(), "versions": versions(), "served": Counts(state).read()}


def _feeds(path: Path) -> list[dict[str, np.ndarray]]:
    with np.load(path) as data:
        feeds: dict[int, dict[str, np.ndarray]] = {}
        for key in data.files:
            head, name = key.split("/", 1)
            feeds.setdefault(int(head.removeprefix("feed")), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]


def _unpacked(path: Path, member: str | None) -> Path:
    """The candidate's file: uploaded as is, or (`member`) inside an uploaded tar of its folder."""
    if member is None:
        return path
    folder = path.with_suffix("")
    with tarfile.open(path) as tar:
        tar.extractall(folder, filter="data")
    return folder / member


def measure(request: dict[str, Any], workdir: Callable[[str], str], state: Path) -> dict[str, Any]:
    """Open, run and time the request's candidates here (see the module's docstring)."""
    from kiln.artifact.manifest import RunSettings
    from kiln.artifact.specs import Profile, TensorSpec
    from kiln.runtime.runners import open_runner

    feeds = _feeds(Path(workdir(request["feeds"])))
    timed = [feeds[i] for i in request.get("timed", [0])]
    runners, outputs, failed = {}, {}, {}
    try:
        for cand in request["candidates"]:
            name = cand["name"]
            try:
                settings = RunSettings.model_validate(cand.get("settings") or {})
                os.environ["TVM_NUM_THREADS"] = str(settings.threads or cores())
                runner = open_runner(cand["backend"], _unpacked(Path(workdir(cand["path"])), cand.get("member")),
                                     [TensorSpec.model_validate(s) for s in request["inputs"]],
                                     [TensorSpec.model_validate(s) for s in request["outputs_specs"]], settings,
                                     Profile.model_validate(request["profile"]) if request.get("profile") else None)
                runners[name] = runner
                for i, feed in enumerate(feeds):
                    for out, value in runner.run(feed).items():
                        outputs[f"{name}/{i}/{out}"] = np.asarray(value)
            except Exception as exc:  # the optimizer names the candidate and goes on without it
                failed[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
                runners.pop(name, None)
        rounds, per_input = through_inputs({n: r.run for n, r in runners.items()}, timed,
                                           repeats=request.get("repeats", 200),
                                           max_seconds=request.get("seconds", 5.0)) if runners else ({}, {})
    finally:
        for r in runners.values():
            r.close()
    np.savez(workdir(request["outputs"]), **outputs)
    Counts(state).add(measurements=1, rounds=sum(len(r.times) for r in rounds.values()))
    return {"rounds": {n: r.times for n, r in rounds.items()}, "per_input": per_input, "failed": failed,
            "cores": cores(),
            "served_at": time.time()}


RANDOM_FILL = "tvm.contrib.random.random_fill_for_measure"  # what MetaSchedule's RPCRunner fills arguments with


def random_fill(tensor) -> None:
    """Fill a trial's argument as kiln's local runner does (kiln.compiler.tuning.measure_arguments): floats
    uniform in [-0.5, 0.5] (where erf/exp/tanh take the path real activations take), integers zero (an index is
    then always in range). TVM's runtime-only library lacks its contrib.random, which MetaSchedule's RPCRunner
    calls on the device before timing a trial."""
    dtype, shape = np.dtype(str(tensor.dtype)), tuple(tensor.shape)
    values = np.random.default_rng().uniform(-0.5, 0.5, shape) if dtype.kind == "f" else np.zeros(shape)
    tensor.copyfrom(np.ascontiguousarray(values.astype(dtype)))


def register(state: str) -> None:
    """Register kiln's functions in this process (TVM's server_init_callback: it runs in the server's process),
    and the fill MetaSchedule's RPCRunner calls, with kiln's inputs (the runtime-only library has none)."""
    import tvm_ffi

    folder = Path(state)
    tvm_ffi.register_global_func(RANDOM_FILL, random_fill, override=True)  # kiln's fill, the trials' inputs

    def workdir(name: str) -> str:
        import tvm

        return tvm.get_global_func("tvm.rpc.server.workpath")(name)

    @tvm_ffi.register_global_func(DESCRIBE, override=True)
    def _describe() -> str:
        Counts(folder).add(sessions=1)
        return json.dumps(describe(folder))

    @tvm_ffi.register_global_func(MEASURE, override=True)
    def _measure(request: str) -> str:
        return json.dumps(measure(json.loads(request), workdir, folder))
