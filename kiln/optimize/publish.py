"""publish: assemble the artifact (module, program, protocol, tuning database, report, manifest) and store it
atomically: a reader sees the complete artifact or none."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from kiln.artifact import layout
from kiln.artifact.manifest import (
    BASELINE,
    DeviceInfo,
    DeviceMeasurements,
    Manifest,
    ModelInfo,
    ProgramInfo,
    TargetBuild,
    TuningInfo,
    speedup,
    versions,
)
from kiln.artifact.store import ArtifactStore
from kiln.compiler import DB_FILES
from kiln.fs import file_sha256, json_sha256
from kiln.optimize.confirm import Choice
from kiln.optimize.judging import judged_where
from kiln.optimize.models import BuiltCandidate, CheckedProgram, Evaluation, PreparedModel
from kiln.optimize.plan import Plan
from kiln.optimize.protocol import generate as generate_protocol
from kiln.optimize.report import markdown as report_markdown
from kiln.optimize.report import svg_plot, tuning_markdown
from kiln.program.external_data import external_data_files

_log = logging.getLogger("kiln.optimize")


def _copy_program(checked: CheckedProgram, dest: Path) -> None:
    src = Path(checked.source)
    if src.suffix == ".py":  # one program of several in a folder: copy the folder
        src = src.parent
    if src.is_file():  # bare .onnx: the program is the model (and its external data)
        dest.mkdir(parents=True)
        shutil.copy2(src, dest / src.name)
        return
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"), symlinks=False)


def _copy_module(built: BuiltCandidate, checked: CheckedProgram, folder: Path) -> str:
    """The selected module into the artifact; returns its name there."""
    module_src = Path(built.path or "")
    module_name = layout.TVM_MODULE if built.backend == "tvm" else layout.ONNX_MODULE
    if built.backend == "onnxruntime" and module_src.resolve() == Path(checked.model_path).resolve():
        # the original model, with any external data beside it, keeps its own file names
        for extra in external_data_files(module_src):
            shutil.copy2(module_src.parent / extra, folder / extra)
    if module_src.is_dir():  # TVM builds per shape bucket: the folder of them
        module_name = layout.TVM_BUCKETS
        shutil.copytree(module_src, folder / module_name, ignore=shutil.ignore_patterns("*.json"))
        return module_name
    shutil.copy2(module_src, folder / module_name)
    return module_name


def module_sha256(path: Path) -> str:
    """A module file's sha256; a folder of them (per-bucket builds): the hash of their names and hashes."""
    if path.is_dir():
        return json_sha256({f.name: file_sha256(f) for f in sorted(path.iterdir())})
    return file_sha256(path)


def _copy_tuning(evaluation: Evaluation, folder: Path, prefix: str = "") -> TuningInfo | None:
    """The tuning database a later re-optimization continues from (tuning/, under `prefix` for a fleet's build),
    if a candidate was tuned."""
    for b in evaluation.built:
        if b.tuning and b.tuning.database:
            (folder / prefix / layout.TUNING_DIR).mkdir(parents=True, exist_ok=True)
            for name in DB_FILES:
                if (Path(b.tuning.database) / name).is_file():
                    shutil.copy2(Path(b.tuning.database) / name, folder / prefix / layout.TUNING_DIR / name)
            return b.tuning.model_copy(update={"database": f"{prefix}{layout.TUNING_DIR}/"})
    return None


class TargetRun(NamedTuple):
    """One target's part of a run: its plan, its candidates as evaluated, and what its gate chose."""

    plan: Plan
    evaluation: Evaluation
    choice: Choice

    @property
    def gain(self) -> float:
        """The selected build's speed-up over onnxruntime: the confirmation's, where there is one (the selection
        rounds' best ratio is biased upward)."""
        selected, evaluation = self.choice.selected, self.evaluation
        if self.choice.confirmation is not None:
            return self.choice.confirmation.speedup.value
        return selected.speedup.value if selected.speedup else \
            speedup(next(c for c in evaluation.candidates if c.name == BASELINE), selected) or 1.0

    @property
    def built(self) -> BuiltCandidate:
        return next(b for b in self.evaluation.built if b.name == self.choice.selected.name)

    def build(self) -> TargetBuild:
        target, selected = self.plan.target, self.choice.selected
        judged = (f"on the device {target.measured_on} ({target.cores} core(s)): every latency and TVM trial"
                  if target.measured_on else judged_where(target, self.plan.judging))
        return TargetBuild(target=target, selected=selected.name, backend=selected.backend,
                           requires=target.requires if selected.backend == "tvm" else [], judged=judged)


def device_info(runs: list[TargetRun]) -> DeviceInfo | None:
    """The manifest's `device` section: what the device said of itself, and what it measured for this run."""
    run = runs[0]
    use = run.plan.device
    if use is None:
        return None
    trials = sum(b.tuning.trials_run or 0 for b in run.evaluation.built
                 if b.tuning and b.tuning.measured_on and not b.cached)
    rounds = run.evaluation.device_rounds + (run.choice.confirmation.device_rounds if run.choice.confirmation else 0)
    return DeviceInfo(key=use.key, tracker=use.address.tracker, cpu=use.cpu, cores=use.cores, flags=use.flags,
                      versions=use.versions, devices=use.devices,
                      measurements=DeviceMeasurements(trials=trials, rounds=rounds),
                      timings=f"every latency here was measured on the device {use.address}, not on the "
                              "optimizer's host")


def _report(folder: Path, runs: list[TargetRun]) -> None:
    (folder / layout.REPORT_DIR).mkdir()
    first = runs[0]
    (folder / layout.REPORT_DIR / "candidates.svg").write_text(svg_plot(first.evaluation.candidates,
                                                                         selected=first.choice.selected.name))
    parts = []
    for run in runs:
        tuned = next((b.tuning for b in run.evaluation.built if b.tuning and b.tuning.per_task), None)
        parts.append((f"## {run.plan.target.describe()}\n\n" if len(runs) > 1 else "")
                     + report_markdown(run.evaluation.candidates, run.choice.selected.name) + "\n"
                     + (f"\n{tuning_markdown(tuned)}\n" if tuned else ""))
    (folder / layout.REPORT_DIR / "candidates.md").write_text("\n".join(parts))


def _fleet_build(run: TargetRun, checked: CheckedProgram, folder: Path) -> TargetBuild:
    """One target's selected module into builds/TARGET/, with its settings, figures and tuning database."""
    prefix = f"{layout.BUILDS_DIR}/{run.plan.target.slug}/"
    (folder / prefix).mkdir(parents=True)
    module = prefix + _copy_module(run.built, checked, folder / prefix)
    selected = run.choice.selected
    return run.build().model_copy(update={
        "model": ModelInfo(path=module, sha256=module_sha256(folder / module), source_sha256=checked.model_sha256),
        "settings": selected.settings, "speedup_vs_baseline": round(run.gain, 4),
        "confirmation": run.choice.confirmation, "candidates": run.evaluation.candidates,
        "tuning": _copy_tuning(run.evaluation, folder, prefix)})


def publish(checked: CheckedProgram, prepared: PreparedModel, runs: list[TargetRun],
            log: logging.Logger | logging.LoggerAdapter = _log) -> Manifest:
    """The chosen candidate of each target as a new version in the plan's store; its manifest
    (ArtifactStore.folder finds it). Several targets: one artifact with a build per target (a fleet)."""
    first = runs[0]
    plan, evaluation = first.plan, first.evaluation

    def fill(folder: Path) -> Manifest:
        _copy_program(checked, folder / layout.PROGRAM_DIR)
        protocol = generate_protocol(folder / layout.PROTOCOL_DIR, Path(checked.root), checked.proto,
                                     checked.request, checked.response)
        _report(folder, runs)
        if len(runs) > 1:  # the least demanding build first: the manifest's own fields repeat it for old readers
            builds = sorted((_fleet_build(r, checked, folder) for r in runs), key=lambda b: len(b.requires))
            lead = builds[0]
            model, tuning, target = lead.model, lead.tuning, ", ".join(r.plan.target.name for r in runs)
            own = {"selected": lead.selected, "backend": lead.backend, "settings": lead.settings,
                   "speedup_vs_baseline": lead.speedup_vs_baseline, "confirmation": lead.confirmation,
                   "candidates": lead.candidates}
        else:
            module_name = _copy_module(first.built, checked, folder)
            model = ModelInfo(path=module_name, sha256=module_sha256(folder / module_name),
                              source_sha256=checked.model_sha256)
            tuning = _copy_tuning(evaluation, folder)
            target = json.dumps(tuning.target, sort_keys=True) if tuning and tuning.target else plan.target.name
            builds = [first.build()]
            own = {"selected": first.choice.selected.name, "backend": first.choice.selected.backend,
                   "settings": first.choice.selected.settings, "speedup_vs_baseline": round(first.gain, 4),
                   "confirmation": first.choice.confirmation, "candidates": evaluation.candidates}
        return Manifest(
            name=checked.name, created_at=datetime.now(UTC).isoformat(), model=model,
            program=ProgramInfo(sha256=checked.program_sha256, shapes=checked.shapes, source=checked.location,
                                file=Path(checked.source).name if checked.source.endswith(".py") else "program.py",
                                allow_nonfinite=checked.allow_nonfinite, requirements=checked.requirements,
                                padding=checked.padding),
            target=target, builds=builds,
            inputs=checked.inputs, outputs=checked.outputs, guards=prepared.guards, profile=checked.profile,
            timing=evaluation.traffic.describe() if evaluation.traffic else None,
            dataset=f"{checked.dataset} ({checked.samples} samples)", tuning=tuning, protocol=protocol,
            device=device_info(runs), request=plan.recorded(), versions=versions(), **own)

    final = ArtifactStore(plan.request.store).publish(fill)
    log.info("published %s (%s)", final, "; ".join(
        f"{r.plan.target.name}: {r.choice.selected.name}, {r.gain:.2f}x vs onnxruntime" for r in runs))
    return Manifest.read(final)
