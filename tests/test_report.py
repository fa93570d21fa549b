"""Every figure in README.md and benchmarks/RESULTS.md comes from a benchmark JSON through benchmarks/report.py.

Hand-copied figures went stale (a README quoted a run its JSON no longer held); these tests keep the docs
and the JSON in step: the tree's generated blocks match what their JSON gives, a figure edited by hand inside
a block is caught and named, and the prose outside the blocks quotes no measured figure of its own."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "report.py"
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402


def run_check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPORT), "--check", "--root", str(root)], capture_output=True,
                          text=True, timeout=120)


def test_the_tree_matches_its_json():
    proc = run_check(ROOT)
    assert proc.returncode == 0, proc.stderr


def copy_tree(tmp_path: Path) -> list[str]:
    """The docs and JSONs in tmp_path; what --check finds there before any change (empty once every JSON is
    current: until then the rows to rerun, which these tests keep apart from what they change)."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    for f in [ROOT / "benchmarks" / "RESULTS.md", *(ROOT / "benchmarks").glob("*.json")]:
        shutil.copy(f, tmp_path / "benchmarks" / f.name)
    return report.check(tmp_path)


def test_a_figure_edited_in_a_block_is_named(tmp_path):
    before = copy_tree(tmp_path)
    readme = tmp_path / "README.md"
    text = readme.read_text()
    block = next(m for m in report.BLOCK.finditer(text) if re.search(r"\d\.\d\dx", m["body"])
                 and not any(f"block {m['name']}:" in p or f"block {m['name']} " in p for p in before))
    figure = re.search(r"\d\.\d\dx", block["body"])
    edited = block["body"][:figure.start()] + "9.99x" + block["body"][figure.end():]
    start = block.start("body")
    readme.write_text(text[:start] + edited + text[block.end("body"):])

    proc = run_check(tmp_path)
    assert proc.returncode == 1
    assert f"README.md: block {block['name']} differs" in proc.stderr
    assert "9.99x" in proc.stderr  # the diff shows what was changed

    subprocess.run([sys.executable, str(REPORT), "--root", str(tmp_path)], check=True, capture_output=True)
    assert readme.read_text() == text  # rewriting puts the JSON's figure back
    assert report.check(tmp_path) == before


def test_no_measured_figure_outside_the_blocks():
    for doc in report.DOCS:
        assert report.stray_figures((ROOT / doc).read_text()) == [], doc


def test_the_rule_finds_what_it_should():
    """The rule itself: ratios, times, sizes and shares in prose are caught; code, blocks and settings are not."""
    text = "\n".join([
        "int8 ships at 2.05x, the call adds 595 us (17.4 ms model), ~5 % of runs, 0.87-1.02x, 259 MB, after 15 minutes",
        "`--tune-time 20m` and `0.5 s` in code, cosine >= 0.99, ResNet-18, 283 sentences, `min_gain` (2 %)",
        "```", "make bench   # 3.0x", "```",
        "<!-- generated: readme-int8 -->", "", "resnet18 3.03x", "", "<!-- end -->"])
    found = [fig for _, fig in report.stray_figures(text)]
    assert found == ["2.05x", "595 us", "17.4 ms", "~5 %", "0.87-1.02x", "259 MB", "15 minutes"]


def test_a_json_without_its_date_or_cpu_fails_the_check_naming_block_and_json(tmp_path):
    import json

    before = copy_tree(tmp_path)
    for name, key, where in (("batching.json", "date", None), ("natural_lengths.json", "cpu", None),
                             ("compression.json", "cpu", "machine")):
        path = tmp_path / "benchmarks" / name
        d = json.loads(path.read_text())
        (d[where] if where else d).pop(key)
        path.write_text(json.dumps(d))
    proc = run_check(tmp_path)
    assert proc.returncode == 1
    assert "block batching: benchmarks/batching.json records no date" in proc.stderr
    assert "block natural-lengths: benchmarks/natural_lengths.json records no CPU" in proc.stderr
    assert "block readme-int8: benchmarks/compression.json records no CPU" in proc.stderr
    assert len(report.check(tmp_path)) > len(before)


def demo_row(**kw) -> dict:
    """A real_models.json row as benchmarks/real_models.py writes it (shapes only, figures made up)."""
    row = {"model": "demo", "run": 1, "date": "2026-12-05", "machine": {"cpu": "Test CPU", "cores": 2},
           "command": "kiln optimize examples/minilm --candidates a,b --trials 0 --ignore-current --json",
           "seconds": 100, "selected": "ort-int8-fused-dynamic", "confirmed": True,
           "speedup": {"value": 1.91, "low": 1.85, "high": 1.97},
           "selection_speedup": {"value": 2.2, "low": 2.1, "high": 2.3},
           "confirmation": {"inputs": 8, "held_out_samples": 20, "held_out_passed": True}, "candidates": []}
    return {**row, **kw}


def test_the_demo_block_quotes_the_confirmed_speedup_with_date_and_cpu():
    render = report.BLOCKS["readme-demo"][1]
    text = "\n".join(render({"models": {}, "results": [demo_row(), demo_row(model="minilm-l3")]}))
    assert "1.91x" in text and "2.20x" not in text  # the confirmation's, never the selection rounds'
    assert "2026-12-05" in text and "Test CPU" in text and "examples/minilm" in text
    with pytest.raises(report.Unfit, match="no confirmed speed-up"):
        render({"results": [demo_row(confirmed=False)]})
    with pytest.raises(report.Unfit, match="demo run 1 records no date"):
        render({"results": [demo_row(date=None)]})
    with pytest.raises(report.Unfit, match="no `demo` row"):
        render({"results": [demo_row(model="minilm-l3")]})


def int8_build(bucket: int, trials: int, share: float) -> dict:
    return {"bucket": f"sequence = {bucket}", "intrinsic": "vnni", "isa": "avx512-vnni", "mcpu": "cascadelake",
            "uarch": "cascadelake", "cores": 2, "ops_per_cycle": 256, "clock_ghz": 2.6, "clock": "test clock",
            "peak_gops": 1331.2, "peak": "", "first_round": 4, "trials_run": trials,
            "tasks": [{"name": f"dense{bucket}", "weight": 6, "trials": trials, "best_us": 10.0, "int8": True,
                       "gops": round(1331.2 * share, 1), "peak_share": share}]}


def int8_row(**kw) -> dict:
    row = {"model": "minilm-l6", "what": "", "minutes": 20, "exit": 0, "seconds": 1.0, "date": "2026-12-05",
           "machine": {"cpu": "Test CPU", "cores": 2, "int8_isa": "avx512-vnni", "llvm_mcpu": "cascadelake"},
           "command": "python benchmarks/int8_vs_ort.py --models minilm-l6 --minutes 20", "selected": "x",
           "tvm": "tvm-int8-smooth", "p50_ms": {"onnxruntime": 2.0, "ort-int8": 1.0, "tvm-int8-smooth": 1.1},
           "best_ort_int8": "ort-int8", "tvm_notes": [], "tvm_reasons": [], "accuracy": {}, "tvm_over_ort_int8": 1.1,
           "trials_run": 300, "buckets": 2, "tasks": [int8_build(64, 100, 0.5), int8_build(128, 200, 1.096)]}
    return {**row, **kw}


def test_a_bucketed_int8_row_shows_every_bucket_and_flags_a_kernel_above_the_peak():
    render = report.BLOCKS["int8-compiler"][1]
    d = {"machine": int8_row()["machine"], "date": "2026-12-05", "runs": [int8_row()]}
    text = "\n".join(render(d))
    assert "| 300 (2 buckets) |" in text  # every bucket's trials, not the first folder's
    assert "bucket sequence = 64" in text and "bucket sequence = 128" in text
    assert "| 50% |" in text
    assert "above peak (1.10x): measurement problem" in text and "110%" not in text
    assert "stale" not in text.lower()  # a row its script wrote today carries no caveat
    with pytest.raises(report.Unfit, match="row minilm-l6 20 min records no date"):
        render({**d, "runs": [int8_row(date=None)]})
    with pytest.raises(report.Unfit, match="row minilm-l6 20 min records no CPU"):
        render({**d, "runs": [int8_row(machine={"cores": 2})]})


def legacy_int8_json() -> dict:
    """int8_vs_ort.json with a current row, one run by hand and one whose kernel record predates the
    per-microarchitecture peak (no `mcpu`, one build); both with their date and CPU."""
    old_build = {k: v for k, v in int8_build(64, 120, 1.096).items() if k not in ("mcpu", "uarch", "clock")}
    hand_made = int8_row(model="encoder", command="optimize /tmp/enc/model.onnx --tune-time 20m")
    old_kernels = int8_row(model="resnet50-thin", trials_run=None, tasks=[old_build],
                           command="optimize /x/benchmarks/work/real/models/resnet50-thin/model.onnx --json")
    del old_kernels["trials_run"]
    return {"machine": int8_row()["machine"], "date": "2026-12-05", "runs": [int8_row(), hand_made, old_kernels]}


def test_a_stale_int8_row_renders_with_its_caveat_passes_check_and_fails_strict(tmp_path):
    """A legacy row with its date and CPU is shown as recorded with a caveat naming its rerun; --check passes
    (the block matches its JSON), --strict lists every stale row with its rerun and exits 1."""
    import json

    text = "\n".join(report.BLOCKS["int8-compiler"][1](legacy_int8_json()))
    assert "| encoder | 20 min |" in text and "2026-12-05, stale (below) |" in text  # its figures, marked
    assert ("- encoder, 20 min: run by hand with `kiln optimize /tmp/enc/model.onnx --tune-time 20m`, not by "
            "benchmarks/int8_vs_ort.py; rerun `python benchmarks/int8_vs_ort.py --models encoder --minutes 20`") in text
    assert ("- resnet50-thin, 20 min: kernel shares not shown: its kernel record predates the per-microarchitecture "
            "int8 peak") in text
    assert "| 120 |" in text  # a legacy row's trials: its build's
    assert "shares not shown: recorded before the per-microarchitecture peak" in text
    old_table = text[text.index("resnet50-thin, 20 min, bucket"):]
    assert "above peak" not in old_table and "| - |" in old_table  # the old record's shares are not shown
    assert "- minilm-l6" not in text

    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "int8_vs_ort.json").write_text(json.dumps(legacy_int8_json()))
    (tmp_path / "README.md").write_text("No figures here.\n")
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("<!-- generated: int8-compiler -->\n<!-- end -->\n")
    subprocess.run([sys.executable, str(REPORT), "--root", str(tmp_path)], check=True, capture_output=True)
    assert "stale (below)" in (tmp_path / "benchmarks" / "RESULTS.md").read_text()  # rewrite writes it

    proc = run_check(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 stale rows are shown with a caveat" in proc.stderr
    strict = subprocess.run([sys.executable, str(REPORT), "--strict", "--root", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert strict.returncode == 1
    stale = [line for line in strict.stderr.splitlines() if line.startswith("stale: ")]
    assert stale == [
        "stale: benchmarks/int8_vs_ort.json row encoder 20 min: run by hand with `kiln optimize /tmp/enc/model.onnx "
        "--tune-time 20m`, not by benchmarks/int8_vs_ort.py: rerun "
        "`python benchmarks/int8_vs_ort.py --models encoder --minutes 20`",
        "stale: benchmarks/int8_vs_ort.json row resnet50-thin 20 min: kernel shares not shown: its kernel record "
        "predates the per-microarchitecture int8 peak and the per-bucket records (a bucketed model's trials and "
        "kernels are one bucket's): rerun `python benchmarks/int8_vs_ort.py --models resnet50-thin --minutes 20`"]

    # once rerun by the script, nothing is stale: --strict passes
    (tmp_path / "benchmarks" / "int8_vs_ort.json").write_text(json.dumps({**legacy_int8_json(), "runs": [int8_row()]}))
    subprocess.run([sys.executable, str(REPORT), "--root", str(tmp_path)], check=True, capture_output=True)
    strict = subprocess.run([sys.executable, str(REPORT), "--strict", "--root", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert strict.returncode == 0, strict.stderr


def test_int8_tasks_reads_every_bucket_build(tmp_path, monkeypatch):
    """benchmarks/int8_vs_ort.py's record of a bucketed TVM int8 candidate: one kernel table per bucket's build,
    labelled from the bucketed folder's map, with the peak of the table's row for the target's mcpu."""
    import json

    import kiln.cpu
    from benchmarks import int8_vs_ort

    monkeypatch.setattr(kiln.cpu, "base_clock", lambda: kiln.cpu.Clock(2.5, "test clock"))
    cache = tmp_path / "cache" / "tvm"
    paths = {}
    for key, trials in (("b", 200), ("a", 100)):  # the folder sorting first is not the largest bucket's
        (cache / key).mkdir(parents=True)
        paths[key] = str(cache / key / "model.so")
        tuning = {"target": {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}, "trials_run": trials,
                  "first_round": 4, "int8": {"intrinsic": "vnni", "isa": "avx512-vnni"},
                  "per_task": [{"name": "dense", "weight": 6, "flop": 2e6, "trials": trials, "best_us": 2.0,
                                "int8": True}]}
        (cache / key / "result.json").write_text(json.dumps({"name": "tvm-int8-smooth", "path": paths[key],
                                                             "tuning": tuning}))
    (cache / "buckets-x").mkdir()
    (cache / "buckets-x" / "result.json").write_text(json.dumps({"128": paths["a"], "64": paths["b"]}))
    builds = int8_vs_ort.int8_tasks(tmp_path, "tvm-int8-smooth", "sequence")
    assert [b["bucket"] for b in builds] == ["sequence = 64", "sequence = 128"]
    assert sum(b["trials_run"] for b in builds) == 300
    assert {b["peak_gops"] for b in builds} == {2 * 2.5 * 256}
    assert builds[0]["tasks"][0]["peak_share"] == round(1000.0 / 1280.0, 3)
