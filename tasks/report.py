"""report: the candidate table and the outcome as Prefect artifacts, visible in the UI."""

from __future__ import annotations

import base64

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from kiln.artifact.manifest import CandidateResult
from kiln.optimize import report as tables


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:60] or "model"


@task(name="report-candidates")
def report_candidates(name: str, candidates: list[CandidateResult]) -> None:
    create_table_artifact(key=f"{_key(name)}-candidates", table=tables.rows(candidates),
                          description=f"kiln candidates for {name}")


@task(name="report-result")
def report_result(name: str, candidates: list[CandidateResult], selected: str | None, artifact: str | None,
                  speedup: float | None, error: str | None = None) -> None:
    if artifact:
        head = (f"# {name}: published `{selected}`\n\n**{speedup:.2f}x** vs onnxruntime (p50).\n\n"
                f"Artifact: `{artifact}`\n\n")
    else:
        head = f"# {name}: nothing published\n\n{error}\n\n"
    plot = base64.b64encode(tables.svg_plot(candidates, selected=selected).encode()).decode()
    body = (head + tables.markdown(candidates, selected)
            + f"\n\n![speed vs accuracy](data:image/svg+xml;base64,{plot})\n")
    create_markdown_artifact(key=f"{_key(name)}-result", markdown=body, description=f"kiln result for {name}")
