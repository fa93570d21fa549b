"""build-onnxruntime: the onnxruntime candidates (graph levels, int8) from the registry in kiln.candidates.

A candidate that fails to build is returned with its reason and never fails the run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from prefect import get_run_logger, task

from kiln import candidates
from tasks.models import BuiltCandidate, CheckedProgram, PreparedModel, ReferenceData
from tasks.reference import load_calibration


@task(name="build-onnxruntime")
def build_ort(checked: CheckedProgram, prepared: PreparedModel, ref: ReferenceData,
              names: list[str]) -> list[BuiltCandidate]:
    logger = get_run_logger()
    method = checked.load().program.calibration_method
    calibration = load_calibration(ref.calibration_path) if ref.calibration_path else None
    out = []
    for name in names:
        cand = candidates.get(name)
        folder = checked.work_dir / "candidates" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        if cand.needs_calibration and calibration is None:
            reason = f"skipped: no calibration data ({ref.calibration_source or 'none'})"
            logger.info("%s %s", name, reason)
            out.append(BuiltCandidate(name=name, backend=cand.backend, error=reason))
            continue
        try:
            built = cand.build(candidates.BuildContext(model=Path(checked.model_path), prepared=Path(prepared.path),
                                                       out_dir=folder, calibration=calibration,
                                                       calibration_method=method))
        except Exception as exc:  # quantizer errors, unsupported ops: report and go on
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            logger.warning("%s failed to build: %s", name, message)
            out.append(BuiltCandidate(name=name, backend=cand.backend, error=message,
                                      build_seconds=time.perf_counter() - start))
            continue
        out.append(BuiltCandidate(name=name, backend=cand.backend, path=str(built.path), settings=built.settings,
                                  build_seconds=time.perf_counter() - start))
        logger.info("%s built in %.1f s", name, time.perf_counter() - start)
    return out
