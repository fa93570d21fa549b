"""plan: every decision of one optimize run, made once from the request and the checked program.

The target every build is compiled for (resolved once, as TVM's Target object is), which candidates each stage
builds, whether the reference cuts a calibration split, which version in the store is the incumbent to beat and
whose tuning database the search continues from, the threads, how TVM builds (weight pre-packing), and what the
artifact records of the request: the flow then only calls the stages in order, each with the Plan, and a compile
build's cache key is a function of the Plan and the candidate alone (kiln.optimize.compile.compile_key).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from kiln.artifact import layout
from kiln.artifact.manifest import INCUMBENT, Manifest
from kiln.artifact.store import ArtifactStore
from kiln.artifact.target import Target
from kiln.compiler.targets import resolve
from kiln.config import settings
from kiln.cpu import u8s8_exact
from kiln.device.address import DeviceAddress
from kiln.optimize import candidates as registry
from kiln.optimize.judging import Judging, judging, lacking
from kiln.optimize.models import CheckedProgram
from kiln.optimize.on_device import DeviceUse, connect
from kiln.optimize.request import OptimizeRequest

_log = logging.getLogger("kiln.optimize")


class Plan(BaseModel):
    request: OptimizeRequest
    name: str  # the model's name in the store
    target: Target  # what every build is compiled for, resolved once from the request's name
    judging: Judging = Field(default_factory=Judging)  # where its compiled builds are judged (here, emulated, not)
    threads: int  # for every backend while measuring
    transforms: list[str]  # built by the build stage: the baseline first, then graph levels, int8, fusion
    compiled: list[str]  # built by the compile stage (TVM), each cached by content
    calibrate: bool  # some transform needs the calibration split (static int8, accuracy-aware fallback)
    incumbent: str | None = None  # the version in service, measured beside the candidates and to be beaten
    tuning_from: str | None = None  # the incumbent's saved tuning database, where the search continues
    fleet: list[str] = Field(default_factory=list)  # every target of the run, when there are several
    tune_fraction: float = 1.0  # this target's part of --tune-time (the targets whose code runs here share it)
    prepack: bool = True  # TVM builds pre-pack their weights (KILN_TVM_PREPACK): part of every compile key
    device: DeviceUse | None = None  # where trials and timing rounds run (--device); None: this host

    @property
    def incumbent_name(self) -> str | None:
        """The incumbent's row in the candidate table, when there is one."""
        return INCUMBENT if self.incumbent else None

    def recorded(self) -> dict[str, Any]:
        """The request as the artifact records it, so that a re-optimization repeats it (what was asked, without
        where it came from or went)."""
        return self.request.model_dump(mode="json", exclude_defaults=True,
                                       exclude={"incumbent", "report_to", "upload", "image", "store"})


def plans(request: OptimizeRequest, checked: CheckedProgram,
          log: logging.Logger | logging.LoggerAdapter = _log) -> list[Plan]:
    """One Plan per target: each target gets its own selection (the fastest on AVX2 is often not the fastest on
    AVX-512); the targets whose code runs here share the tuning time, the others compile untuned."""
    if request.device:  # the device's own CPU, asked of it once
        use = connect(DeviceAddress.parse(request.device), request.device_timeout, log)
        return [plan(request, checked, log, use.target(), device=use)]
    names = target_names(request, checked, log)
    targets = [resolve(n) for n in names]
    tuned = sum(1 for t in targets if not lacking(t)) or 1
    return [plan(request, checked, log, target, names if len(names) > 1 else [], 1.0 / tuned) for target in targets]


def plan(request: OptimizeRequest, checked: CheckedProgram, log: logging.Logger | logging.LoggerAdapter = _log,
         target: Target | None = None, fleet: list[str] | None = None, tune_fraction: float = 1.0,
         device: DeviceUse | None = None) -> Plan:
    target = target or resolve(target_names(request, checked, log)[0])
    log.info("target: %s", target.describe())
    chosen = request.chosen
    if request.candidates is None and not u8s8_exact(target.int8_isa):
        chosen = registry.check([*chosen, *registry.NO_VNNI_DEFAULT])
    transforms = [*registry.of_stage(chosen, "baseline"), *registry.of_stage(chosen, "transform")]
    incumbent = request.incumbent
    if incumbent is None and request.compare_with_current:
        newest = ArtifactStore(request.store).newest(checked.name)
        incumbent = str(newest) if newest else None
    build = Manifest.read(Path(incumbent)).build_for(target.name) if incumbent else None
    judged = judging(target)
    if incumbent and build is None:
        log.info("the version in service (%s) has no build for %s: nothing to beat there", incumbent, target.name)
        incumbent = None
    elif incumbent and build.backend == "tvm" and not judged.here:  # its code would stop here with SIGILL
        log.info("the version in service (%s) is compiled for %s, which this host cannot run: nothing to beat "
                 "here", incumbent, target.name)
        incumbent = None
    elif incumbent and request.incumbent is None:
        log.info("%s already has a version in the store (%s): it is the one to beat", checked.name, incumbent)
    tuning = build.tuning.database if build and build.tuning and build.model else layout.TUNING_DIR
    if device and not judged.here:
        log.info("%s: this host lacks %s; compiled builds are judged on the device %s (accuracy and speed)",
                 target.name, ", ".join(judged.lacking), device.address)
    elif judged.emulator:
        log.info("%s: this host lacks %s; compiled builds are judged under qemu-x86_64 -cpu %s (accuracy only)",
                 target.name, ", ".join(judged.lacking), judged.emulator)
    return Plan(request=request, name=checked.name, target=target, judging=judged,
                threads=request.threads or (device.cores if device else os.cpu_count() or 1), device=device,
                transforms=transforms, compiled=registry.of_stage(chosen, "compile"),
                calibrate=any(registry.get(c).needs_calibration or registry.get(c).accuracy_aware
                              for c in transforms),
                incumbent=incumbent, prepack=settings().tvm_prepack, fleet=fleet or [], tune_fraction=tune_fraction,
                # reoptimize continues the search from the version in service; a plain re-run hits the cache
                tuning_from=str(Path(request.incumbent) / tuning) if request.incumbent and incumbent else None)


# KILN_INT8_ISA (the serving CPUs' int8 instructions, before --target) as the target it stands for
INT8_ISA_TARGETS = {"sse": "x86-64-v2", "avx2": "x86-64-v3", "avx512": "x86-64-v4", "avx512-vnni": "icelake-server",
                    "avx-vnni": "alderlake", "amx": "sapphirerapids"}


def target_names(request: OptimizeRequest, checked: CheckedProgram,
                 log: logging.Logger | logging.LoggerAdapter = _log) -> list[str]:
    """The request's --target(s) where it names any, else program.py's `targets`, else the CPU KILN_INT8_ISA
    describes (an alias kept from before --target), else this host."""
    if "targets" in request.model_fields_set:
        return request.targets
    if checked.targets:
        return checked.targets
    isa = settings().int8_isa
    if isa != "auto":
        log.info("KILN_INT8_ISA=%s: building for %s (--target names the CPU directly)", isa, INT8_ISA_TARGETS[isa])
        return [INT8_ISA_TARGETS[isa]]
    return request.targets
