"""Replace one `## ...` section of benchmarks/RESULTS.md, keeping every other section as it is."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(heading: str, lines: list[str]) -> Path:
    """`heading` is the section's first line (`## Title ...`); the section runs to the next `## `."""
    section = "\n".join([heading, *lines]) + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    title = heading.split("(")[0].strip()
    start = text.find(title)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")
    return RESULTS
