"""The scheduled `reoptimize` flow: every model in the store gets more tuning, and a new version ships only
when it is faster than the one in service and inside every range.

For each model's newest version it runs `optimize` (as a subflow, visible in the UI) on the program saved in
the artifact, with the artifact as the incumbent: the TVM search continues from its tuning database, the
incumbent is measured again beside the new candidates on the same data, and nothing is published unless a
candidate beats it by `min_gain`. A model whose program or data vanished is skipped with a log line.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.optimize import optimize
from kiln.artifact.layout import PROGRAM_DIR
from kiln.artifact.manifest import Manifest
from kiln.artifact.store import ArtifactStore
from kiln.errors import KilnError
from kiln.optimize.defaults import LATENCY_REPEATS, MIN_GAIN
from kiln.optimize.request import OptimizeRequest


def program_location(artifact: Path, manifest: Manifest) -> tuple[str | None, str | None]:
    """(where the artifact's saved program is, why it cannot be used)."""
    folder = artifact / PROGRAM_DIR
    if not folder.is_dir():
        return None, f"its program folder {folder} is gone"
    file = manifest.program.file
    if (folder / file).is_file():
        return str(folder / file if file != "program.py" else folder), None
    models = sorted(folder.glob("*.onnx"))
    if len(models) == 1 and not any(folder.glob("*.py")):  # a bare .onnx was the program
        return str(models[0]), None
    return None, f"neither {file} nor a single .onnx model is in {folder}"


# what a re-optimization decides itself, whatever the version in service was asked
_OWN = {"program", "data", "ranges", "name", "compare_with_current", "trials", "tune_time", "min_gain",
        "latency_repeats"}


def request_for(folder: Path, manifest: Manifest, location: str, **own) -> OptimizeRequest:
    """The request the version in service recorded, on its saved program (its data and ranges are in it), with
    this re-optimization's budget and the version as the incumbent."""
    asked = {k: v for k, v in manifest.request.items() if k not in _OWN}
    if own.get("targets"):  # told otherwise; else the version in service's (`target` in older requests, or the
        asked = {k: v for k, v in asked.items() if k not in ("target", "targets", "device")}  # device's own CPU)
    else:
        own.pop("targets", None)
    asked.setdefault("shapes", manifest.program.shapes or None)  # versions made before requests were recorded
    return OptimizeRequest.of(**asked, program=location, name=manifest.name, incumbent=str(folder), **own)


def newest_versions(store: ArtifactStore, names: list[str] | None) -> dict[str, tuple[Path, Manifest]]:
    """name -> (folder, manifest) of its newest version (manifests() is sorted oldest first)."""
    return {m.name: (folder, m) for folder, m in store.manifests() if not names or m.name in names}


def history_markdown(store: ArtifactStore, outcomes: list[dict]) -> str:
    """Every version of every model, oldest first: the speed-up growing over time is the point."""
    lines = ["# Model versions", "", "| model | version | created | selected | p50 ms | vs onnxruntime |",
             "|---|---|---|---|---|---|"]
    for _, m in store.manifests():
        p50 = m.selected_p50()
        lines.append(f"| {m.name} | {m.version or '-'} | {m.created_at[:19]} | {m.selected} | "
                     f"{'-' if p50 is None else f'{p50:.4g}'} | {m.speedup_vs_baseline:.2f}x |")
    lines += ["", "## This run", "", "| model | outcome |", "|---|---|"]
    lines += [f"| {o['model']} | {o['outcome']} |" for o in outcomes]
    return "\n".join(lines) + "\n"


@flow(name="reoptimize", log_prints=True)
def reoptimize(
    extra_trials: int = 64,
    models: list[str] | None = None,
    store: str | None = None,
    targets: list[str] | None = None,
    min_gain: float = MIN_GAIN,
    latency_repeats: int = LATENCY_REPEATS,
    tune_time: float | None = None,
) -> list[dict]:
    """Continue tuning every stored model and publish a new version only where it is faster.

    Args:
        extra_trials: MetaSchedule trials to add to each model's search (its saved database is kept).
        models: model names to re-optimize (default: every model in the store).
        store: artifact store folder (default: KILN_STORE or ~/.kiln/store on the worker).
        targets: the CPUs to build for (default: each version's own targets, as its request recorded them).
        min_gain: how much faster (a fraction, measured in the same run) a new version must be.
        latency_repeats: timed calls per candidate.
        tune_time: a wall-clock tuning budget per model, in seconds, beside extra_trials.
    """
    logger = get_run_logger()
    st = ArtifactStore(store)
    outcomes = []
    found = newest_versions(st, models)
    for name in sorted(set(models or []) - set(found)):
        logger.warning("skipping %s: no such model in the store %s", name, st.root)
        outcomes.append({"model": name, "outcome": "skipped: not in the store"})
    for name, (folder, manifest) in sorted(found.items()):
        location, problem = program_location(folder, manifest)
        if problem:
            logger.warning("skipping %s v%s: %s", name, manifest.version, problem)
            outcomes.append({"model": name, "outcome": f"skipped: {problem}"})
            continue
        try:
            request = request_for(folder, manifest, location, trials=extra_trials, tune_time=tune_time,
                                  targets=targets, store=store, min_gain=min_gain, latency_repeats=latency_repeats)
            outcome = optimize(request)
        except KilnError as exc:  # the program or its data no longer load, or nothing passes its ranges
            logger.warning("skipping %s v%s: %s", name, manifest.version, exc.render())
            where = f"{exc.where}: " if exc.where else ""
            outcomes.append({"model": name, "outcome": f"skipped: {where}{exc.message}"})
            continue
        if outcome.published:
            new = outcome.manifest
            outcomes.append({"model": name, "outcome": f"v{new.version} published ({new.selected}, "
                                                       f"{new.speedup_vs_baseline:.2f}x vs onnxruntime)",
                             "artifact": outcome.artifact})
        else:
            outcomes.append({"model": name, "outcome": f"v{manifest.version} kept: still the fastest",
                             "artifact": str(folder)})
        logger.info("%s: %s", name, outcomes[-1]["outcome"])
    create_markdown_artifact(key="model-versions", markdown=history_markdown(st, outcomes),
                             description="every version of every model, and what this re-optimization did")
    return outcomes
