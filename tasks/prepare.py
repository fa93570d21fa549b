"""prepare: fix shapes, inline functions and fold constant subgraphs so TVM's importer accepts the model."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from kiln.hashing import file_sha256
from kiln.onnx_inspect import index_guards, load_model
from kiln.prepare import prepare as prepare_model
from tasks.models import CheckedProgram, PreparedModel


@task(name="prepare")
def prepare(checked: CheckedProgram) -> PreparedModel:
    out = checked.work_dir / "prepared.onnx"
    model = load_model(Path(checked.model_path))
    before = len(model.graph.node)
    prepared = prepare_model(model, checked.inputs, out, checked.model_path)
    get_run_logger().info("prepared model: %d -> %d nodes (shapes fixed, constants folded)", before,
                          len(prepared.graph.node))
    return PreparedModel(path=str(out), sha256=file_sha256(out), guards=index_guards(prepared) or checked.guards)
