"""publish: assemble the artifact (module, program, tuning database, manifest) and store it atomically."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, UTC
from pathlib import Path

from prefect import get_run_logger, task

from kiln.compiler import DB_FILES
from kiln.hashing import file_sha256
from kiln.loader import external_data_files
from kiln.protocol import generate as generate_protocol
from kiln.report import markdown as report_markdown
from kiln.report import svg_plot
from kiln.manifest import CandidateResult, Manifest, ModelInfo, versions
from kiln.store import ArtifactStore
from tasks.models import BuiltCandidate, CheckedProgram, Evaluation, PreparedModel


def _copy_program(checked: CheckedProgram, dest: Path) -> None:
    src = Path(checked.source)
    if src.suffix == ".py":  # one program of several in a folder: copy the folder
        src = src.parent
    if src.is_file():  # bare .onnx: the program is the model (and its external data)
        dest.mkdir(parents=True)
        shutil.copy2(src, dest / src.name)
        return
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"), symlinks=False)


@task(name="publish", retries=2, retry_delay_seconds=2)
def publish(checked: CheckedProgram, prepared: PreparedModel, evaluation: Evaluation, selected: CandidateResult,
            target: str, store: str | None, options: dict) -> str:
    logger = get_run_logger()
    built: BuiltCandidate = next(b for b in evaluation.built if b.name == selected.name)
    st = ArtifactStore(store)
    staged = st.staging()
    try:
        module_src = Path(built.path or "")
        module_name = "model.so" if built.backend == "tvm" else "model.onnx"
        if built.backend == "onnxruntime" and module_src.resolve() == Path(checked.model_path).resolve():
            # the original model, with any external data beside it, keeps its own file names
            for extra in external_data_files(module_src):
                shutil.copy2(module_src.parent / extra, staged / extra)
        shutil.copy2(module_src, staged / module_name)
        _copy_program(checked, staged / "program")
        program = checked.load().program
        protocol_info = generate_protocol(staged / "protocol", Path(checked.root), program.proto, program.request,
                                          program.response)
        tuning = None
        for b in evaluation.built:
            if b.tuning and b.tuning.get("database"):
                db = Path(b.tuning["database"])
                (staged / "tuning").mkdir(exist_ok=True)
                for name in DB_FILES:
                    if (db / name).is_file():
                        shutil.copy2(db / name, staged / "tuning" / name)
                tuning = {k: v for k, v in b.tuning.items() if k != "database"}
                tuning["database"] = "tuning/"
        base = next(c for c in evaluation.candidates if c.name == "onnxruntime")
        speedup = (base.latency_ms.p50 / selected.latency_ms.p50
                   if base.latency_ms and selected.latency_ms and selected.latency_ms.p50 > 0 else 1.0)
        manifest = Manifest(
            name=checked.name, created_at=datetime.now(UTC).isoformat(),
            model=ModelInfo(path=module_name, sha256="", source_sha256=checked.model_sha256),
            program={"sha256": checked.program_sha256, "path": "program/", "shapes": checked.shapes,
                     "source": checked.location, "file": Path(checked.source).name if checked.source.endswith(".py")
                     else "program.py"},
            target=json.dumps(tuning["target"], sort_keys=True) if tuning and tuning.get("target") else target,
            inputs=checked.inputs, outputs=checked.outputs, guards=prepared.guards,
            dataset=f"{checked.dataset} ({checked.samples} samples)", candidates=evaluation.candidates,
            selected=selected.name, backend=selected.backend, settings=selected.settings,
            speedup_vs_baseline=round(speedup, 4), tuning=tuning, protocol=protocol_info.as_dict(), options=options,
            versions=versions())
        (staged / "report").mkdir()
        (staged / "report" / "candidates.svg").write_text(svg_plot(evaluation.candidates, selected=selected.name))
        (staged / "report" / "candidates.md").write_text(report_markdown(evaluation.candidates, selected.name) + "\n")
        manifest.model.sha256 = file_sha256(staged / module_name)
        final = st.publish(staged, manifest)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    logger.info("published %s (%s, %.2fx vs onnxruntime)", final, selected.name, speedup)
    return str(final)
