"""Scheduled re-optimization on a real Prefect server: the search continues from the artifact's saved tuning
database, the version in service is measured again beside the new candidates, and only a faster one ships."""

from __future__ import annotations

import json
from pathlib import Path

import onnx_models
from conftest import run_kiln

DB = "database_tuning_record.json"


def records(folder: Path) -> int:
    return sum(1 for line in (folder / DB).read_text().splitlines() if line.strip())


def newest(store: Path, name: str) -> tuple[Path, dict]:
    found = [(p, json.loads((p / "manifest.json").read_text())) for p in (store / name).iterdir()
             if (p / "manifest.json").is_file()]
    return max(found, key=lambda pm: pm[1]["version"])


def test_reoptimize_continues_the_search_and_ships_only_faster(kiln_env, tmp_path):
    model = onnx_models.small_cnn(tmp_path / "cnn.onnx", size=64)
    store = Path(kiln_env["KILN_STORE"])
    # 2 trials now and 2 more later: each trial is a search round of seconds, and what is checked is that the
    # second search starts from the first one's records and adds to them
    proc = run_kiln(["optimize", str(model), "--candidates", "onnxruntime,tvm", "--trials", "2", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    v1_path, v1 = newest(store, "cnn")
    assert v1["version"] == 1
    v1_records = records(v1_path / "tuning")
    assert v1_records > 0

    # v1 made slow in a controlled way, not by a measured difference that noise could flip: the same outputs
    # from a model with ~80 MFLOP of dead work that graph optimization "disable" cannot fold away
    onnx_models.slowed(model, v1_path / "slow.onnx")
    v1.update(backend="onnxruntime", model={**v1["model"], "path": "slow.onnx"},
              settings={**v1["settings"], "optimization": "disable", "device": None})
    (v1_path / "manifest.json").write_text(json.dumps(v1))  # the manifest is not hashed

    # a fresh KILN_HOME: the search can only continue from the database saved in the artifact
    env = {**kiln_env, "KILN_HOME": str(tmp_path / "other-home")}
    proc = run_kiln(["reoptimize", "--extra-trials", "2", "-v"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"continuing the search from {v1_records} tuning records" in proc.stdout + proc.stderr
    v2_path, v2 = newest(store, "cnn")
    assert v2["version"] == 2 and "v2 published" in proc.stdout
    assert records(v2_path / "tuning") > v1_records  # the same database, grown
    current = next(c for c in v2["candidates"] if c["name"] == "current")
    chosen = next(c for c in v2["candidates"] if c["name"] == v2["selected"])
    assert current["settings"]["version"] == 1
    # the gate's invariant, recomputed from the manifest's per-round medians (not a bound on measured speed): the
    # new version beat the one in service, round by round, beyond the noise and by min_gain
    from kiln.artifact.manifest import LatencyMs
    from kiln.optimize.noise import speedup

    gain = speedup(LatencyMs(**current["latency_ms"]), LatencyMs(**chosen["latency_ms"]))
    assert gain.beyond_noise(0.02), gain

    # v2 is now in service; a challenger would have to be 10x faster (min_gain 0.9), which the same model rebuilt
    # from the same database cannot be, so nothing replaces it
    proc = run_kiln(["reoptimize", "--extra-trials", "0", "--min-gain", "0.9"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "v2 kept: still the fastest" in proc.stdout
    assert newest(store, "cnn")[1]["id"] == v2["id"]
    assert len([p for p in (store / "cnn").iterdir() if not p.name.startswith(".")]) == 2


def test_reoptimize_skips_a_model_whose_program_vanished(kiln_env, tmp_path, digits_program):
    store = Path(kiln_env["KILN_STORE"])
    proc = run_kiln(["optimize", str(digits_program), "--candidates", "onnxruntime", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    path, _ = newest(store, "digits")
    (path / "program" / "digits.npz").unlink()  # its dataset is gone
    proc = run_kiln(["reoptimize", "--extra-trials", "0", "--model", "digits", "--model", "ghost"], kiln_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped" in proc.stdout and "digits.npz" in proc.stdout
    assert "ghost" in proc.stdout and "not in the store" in proc.stdout
    assert len([p for p in (store / "digits").iterdir() if not p.name.startswith(".")]) == 1
