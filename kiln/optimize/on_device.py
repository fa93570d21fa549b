"""Measuring on a device (kiln.device) instead of this host: `kiln optimize --device KEY@HOST:PORT`.

Decided once, at the start of a run (`connect`): the device describes itself, its TVM and onnxruntime must be
this optimizer's (a build or a timing from other versions would not be what ships), and the target becomes its
CPU (kiln.compiler.targets.for_flags: the runtime has no LLVM to name it) with its cores. The Plan carries the
answer (DeviceUse); TVM's trials go to the devices under the key through MetaSchedule's RPCRunner
(kiln.compiler.rpc), and the selection and confirmation rounds of every candidate (onnxruntime's too) run there
in kiln's interleaved protocol (`time_rounds`), so every latency in the manifest is the device's.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from kiln.artifact.manifest import LatencyMs, RunSettings, versions
from kiln.artifact.target import Target
from kiln.device.address import DeviceAddress
from kiln.errors import DeviceError
from kiln.optimize.models import BuiltCandidate, CheckedProgram
from kiln.optimize.traffic import Traffic, latencies
from kiln.runtime.latency import Rounds

_log = logging.getLogger("kiln.optimize")
SAME_VERSIONS = ("tvm", "onnxruntime")  # a device with others would time (and run) other code than what ships


class DeviceUse(BaseModel):
    """The device a run measures on, as it described itself when the run started."""

    key: str
    host: str
    port: int
    timeout: float = 60.0  # seconds to wait for a free device under the key
    cpu: str = ""
    flags: list[str] = Field(default_factory=list)
    cores: int = 1
    versions: dict[str, str] = Field(default_factory=dict)
    devices: int = 1  # registered under the key when the run started: the trials measured at once

    @property
    def address(self) -> DeviceAddress:
        return DeviceAddress(key=self.key, host=self.host, port=self.port)

    @property
    def fingerprint(self) -> str:
        """What a tuning record measured here depends on: the CPU, its flags and cores (the shared database's
        `measured_on`, so the next model for the same kind of device starts from these records)."""
        flags = hashlib.sha256(" ".join(sorted(self.flags)).encode()).hexdigest()[:8]
        return f"device {self.cpu} x{self.cores} {flags}"

    def target(self) -> Target:
        from kiln.compiler.targets import for_flags

        found = for_flags(self.key, set(self.flags), f"the CPUID flags of the device {self.address}")
        return found.model_copy(update={"cores": self.cores, "measured_on": str(self.address)})


def refused_versions(about: dict[str, Any]) -> list[str]:
    """The versions the device runs that differ from this optimizer's (empty: it may measure for it)."""
    ours, theirs = versions(), about.get("versions", {})
    return [f"{name} {theirs.get(name, '?')} (this optimizer: {ours.get(name)})" for name in SAME_VERSIONS
            if theirs.get(name) != ours.get(name)]


def connect(address: DeviceAddress, timeout: float, log: logging.Logger | logging.LoggerAdapter = _log) -> DeviceUse:
    """Ask a device under the key to describe itself (DeviceError: none registered, all busy past `timeout`,
    other versions)."""
    from kiln.device.client import Session

    # the device ends the session itself after that, whatever happens on this side
    session = Session((address.host, address.port), address.key, timeout=timeout, session_timeout=timeout + 60)
    try:
        about = session.describe()
    except Exception as exc:
        raise DeviceError(f"the device under {address.key!r} at the tracker {address.tracker} did not describe "
                          f"itself: {type(exc).__name__}: {exc}",
                          hint="is it a kiln device (`kiln device`), not a bare TVM RPC server?") from None
    finally:
        session.close()
    other = refused_versions(about)
    if other:
        raise DeviceError(f"the device under {address.key!r} at the tracker {address.tracker} runs "
                          + ", ".join(other), hint="install the optimizer's versions on the device (or use the "
                                                   "runtime image kiln builds: it pins them)")
    use = DeviceUse(key=address.key, host=address.host, port=address.port, timeout=timeout,
                    cpu=about.get("cpu", ""), flags=about.get("flags", []), cores=int(about.get("cores", 1)),
                    versions=about.get("versions", {}), devices=max(1, session.registered))
    log.info("device %s: %s, %d core(s), %d device(s) under the key", address, use.cpu, use.cores, use.devices)
    return use


class DeviceRounds(BaseModel):
    latency_ms: dict[str, LatencyMs] = Field(default_factory=dict)
    failed: dict[str, str] = Field(default_factory=dict)
    rounds: int = 0  # timing rounds the device served


def _measured(use: DeviceUse, checked: CheckedProgram, cands: list[tuple[BuiltCandidate, RunSettings]],
              feeds: list[dict[str, np.ndarray]], session_s: float, **timing) -> tuple[dict, dict[str, np.ndarray]]:
    """kiln.device.client.Session.measure on a device under the key (its answer and the outputs of every feed);
    a device that stops answering is a DeviceError naming it. The device ends the session after `session_s`."""
    from kiln.device.client import Session

    sent = [{"name": c.name, "backend": c.backend, "path": c.path, "settings": s.model_dump(mode="json")}
            for c, s in cands]
    session = Session((use.host, use.port), use.key, timeout=use.timeout, session_timeout=use.timeout + session_s)
    try:
        return session.measure(sent, feeds, inputs=[s.model_dump(mode="json") for s in checked.inputs],
                               outputs=[s.model_dump(mode="json") for s in checked.outputs],
                               profile=checked.profile.model_dump(mode="json") if checked.profile else None, **timing)
    except Exception as exc:
        raise DeviceError(f"the device under {use.key!r} at the tracker {use.address.tracker} stopped answering: "
                          f"{type(exc).__name__}: {str(exc)[:300]}",
                          hint="check the device (`kiln device` on the target machine) and run again") from None
    finally:
        session.close()


def time_rounds(use: DeviceUse, checked: CheckedProgram, cands: list[tuple[BuiltCandidate, RunSettings]],
                inputs: list[dict[str, np.ndarray]], traffic: Traffic | None, repeats: int,
                seconds: float) -> DeviceRounds:
    """Every candidate timed together on a device under the key, in interleaved rounds, each timed call a pass
    through `inputs` (what time_over does here). One that fails there is named; the others are timed."""
    answer, _ = _measured(use, checked, cands, inputs, seconds * (len(cands) + 2) + 120,
                          timed=list(range(len(inputs))), repeats=repeats, seconds=seconds)
    timed = {n: Rounds(times=t) for n, t in answer["rounds"].items()}
    return DeviceRounds(latency_ms=latencies(timed, answer["per_input"], len(inputs), traffic),
                        failed={n: f"failed on the device {use.address}: {why}" for n, why in answer["failed"].items()},
                        rounds=sum(len(t) for t in answer["rounds"].values()))


def outputs_of(use: DeviceUse, checked: CheckedProgram, cand: BuiltCandidate, settings: RunSettings,
               feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The candidate's outputs for every feed, run on a device under the key (for a build whose code this host
    cannot run: its accuracy is judged on what the device returns). Raises with the device's reason."""
    answer, got = _measured(use, checked, [(cand, settings)], feeds, 600, timed=[0], repeats=1, seconds=0.1)
    if cand.name in answer["failed"]:
        raise RuntimeError(f"on the device {use.address}: {answer['failed'][cand.name]}")
    return [{o.name: got[f"{cand.name}/{i}/{o.name}"] for o in checked.outputs} for i in range(len(feeds))]
