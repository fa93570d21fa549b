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


def test_a_figure_edited_in_a_block_is_named(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    for f in [ROOT / "benchmarks" / "RESULTS.md", *(ROOT / "benchmarks").glob("*.json")]:
        shutil.copy(f, tmp_path / "benchmarks" / f.name)
    assert run_check(tmp_path).returncode == 0  # the copy alone is whole

    readme = tmp_path / "README.md"
    text = readme.read_text()
    block = next(m for m in report.BLOCK.finditer(text) if re.search(r"\d\.\d\dx", m["body"]))
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
    assert run_check(tmp_path).returncode == 0


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
