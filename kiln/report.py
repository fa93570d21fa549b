"""Tables of candidates, for the terminal, for Prefect artifacts and for failed gates."""

from __future__ import annotations

from kiln.manifest import CandidateResult


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def rows(candidates: list[CandidateResult], selected: str | None = None) -> list[dict[str, str]]:
    """One flat dict per candidate; keys are column titles."""
    base = next((c for c in candidates if c.name == "onnxruntime" and c.latency_ms), None)
    out = []
    for c in candidates:
        row = {
            "candidate": c.name + (" *" if c.name == selected else ""),
            "backend": c.backend,
            "p50 ms": _fmt(c.latency_ms.p50) if c.latency_ms else "-",
            "p90 ms": _fmt(c.latency_ms.p90) if c.latency_ms else "-",
            "speed-up": (f"{base.latency_ms.p50 / c.latency_ms.p50:.2f}x"
                         if base and c.latency_ms and c.latency_ms.p50 > 0 else "-"),
        }
        for name, m in c.metrics.items():
            row[name] = f"{_fmt(m.value)} {'ok' if m.passed else 'FAIL'}"
        row["passed"] = "yes" if c.passed else "no"
        row["why not"] = "; ".join(c.reasons)
        out.append(row)
    return out


def ranges(candidates: list[CandidateResult]) -> list[str]:
    """`metric: range` lines (ranges relative to the reference are resolved to numbers)."""
    seen: dict[str, str] = {}
    for c in candidates:
        for name, m in c.metrics.items():
            seen.setdefault(name, m.range)
    return [f"{k}: {v}" for k, v in seen.items()]


def markdown(candidates: list[CandidateResult], selected: str | None = None) -> str:
    table = rows(candidates, selected)
    cols = list(dict.fromkeys(k for r in table for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(r.get(c, "").replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines + ["", "Acceptable ranges: " + "; ".join(ranges(candidates))])


def text(candidates: list[CandidateResult], selected: str | None = None) -> str:
    """A plain-text table (rich renders a nicer one in the CLI)."""
    table = rows(candidates, selected)
    cols = list(dict.fromkeys(k for r in table for k in r))
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in table)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(r.get(c, "").ljust(widths[c]) for c in cols) for r in table]
    lines += ["acceptable ranges: " + "; ".join(ranges(candidates))]
    return "\n".join(line.rstrip() for line in lines)
