"""publish: assemble the artifact (module, program, protocol, tuning database, report, manifest) and store it
atomically: a reader sees the complete artifact or none."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from kiln.artifact import layout
from kiln.artifact.manifest import (
    BASELINE,
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


def _copy_tuning(evaluation: Evaluation, folder: Path) -> TuningInfo | None:
    """The tuning database a later re-optimization continues from (tuning/), if a candidate was tuned."""
    for b in evaluation.built:
        if b.tuning and b.tuning.database:
            (folder / layout.TUNING_DIR).mkdir(exist_ok=True)
            for name in DB_FILES:
                if (Path(b.tuning.database) / name).is_file():
                    shutil.copy2(Path(b.tuning.database) / name, folder / layout.TUNING_DIR / name)
            return b.tuning.model_copy(update={"database": f"{layout.TUNING_DIR}/"})
    return None


def publish(checked: CheckedProgram, prepared: PreparedModel, evaluation: Evaluation, choice: Choice, plan: Plan,
            log: logging.Logger | logging.LoggerAdapter = _log) -> Manifest:
    """The chosen candidate as a new version in the plan's store; its manifest (ArtifactStore.folder finds it)."""
    selected, confirmation, target = choice.selected, choice.confirmation, plan.target
    built = next(b for b in evaluation.built if b.name == selected.name)
    if confirmation is not None:  # timed again after the choice: the selection rounds' best ratio is biased
        gain = confirmation.speedup.value
    else:
        gain = selected.speedup.value if selected.speedup else \
            speedup(next(c for c in evaluation.candidates if c.name == BASELINE), selected) or 1.0

    def fill(folder: Path) -> Manifest:
        module_name = _copy_module(built, checked, folder)
        _copy_program(checked, folder / layout.PROGRAM_DIR)
        protocol = generate_protocol(folder / layout.PROTOCOL_DIR, Path(checked.root), checked.proto,
                                     checked.request, checked.response)
        tuning = _copy_tuning(evaluation, folder)
        (folder / layout.REPORT_DIR).mkdir()
        (folder / layout.REPORT_DIR / "candidates.svg").write_text(svg_plot(evaluation.candidates,
                                                                             selected=selected.name))
        tuned = next((b.tuning for b in evaluation.built if b.tuning and b.tuning.per_task), None)
        (folder / layout.REPORT_DIR / "candidates.md").write_text(
            report_markdown(evaluation.candidates, selected.name) + "\n"
            + (f"\n{tuning_markdown(tuned)}\n" if tuned else ""))
        return Manifest(
            name=checked.name, created_at=datetime.now(UTC).isoformat(),
            model=ModelInfo(path=module_name, sha256=module_sha256(folder / module_name),
                            source_sha256=checked.model_sha256),
            program=ProgramInfo(sha256=checked.program_sha256, shapes=checked.shapes, source=checked.location,
                                file=Path(checked.source).name if checked.source.endswith(".py") else "program.py",
                                allow_nonfinite=checked.allow_nonfinite, requirements=checked.requirements,
                                padding=checked.padding),
            target=json.dumps(tuning.target, sort_keys=True) if tuning and tuning.target else target.name,
            builds=[TargetBuild(target=target, selected=selected.name, backend=selected.backend,
                                requires=target.requires if selected.backend == "tvm" else [],
                                judged=judged_where(target))],
            inputs=checked.inputs, outputs=checked.outputs, guards=prepared.guards, profile=checked.profile,
            timing=evaluation.traffic.describe() if evaluation.traffic else None,
            dataset=f"{checked.dataset} ({checked.samples} samples)", candidates=evaluation.candidates,
            selected=selected.name, backend=selected.backend, settings=selected.settings,
            speedup_vs_baseline=round(gain, 4), confirmation=confirmation, tuning=tuning, protocol=protocol,
            request=plan.recorded(), versions=versions())

    final = ArtifactStore(plan.request.store).publish(fill)
    log.info("published %s (%s, %.2fx vs onnxruntime)", final, selected.name, gain)
    return Manifest.read(final)
