"""Tables of candidates, for the terminal, for Prefect artifacts and for failed gates."""

from __future__ import annotations

from kiln.artifact.manifest import BASELINE, CandidateResult, TuningInfo, speedup
from kiln.optimize.traffic import bucket_order


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _speedup(base: CandidateResult | None, c: CandidateResult) -> str:
    """`1.84x (1.80-1.88)`: the paired median ratio and its interval, once the gate has judged it."""
    if c.speedup:
        s = c.speedup
        return f"{s.value:.2f}x" if s.high - s.low < 5e-3 else f"{s.value:.2f}x ({s.low:.2f}-{s.high:.2f})"
    return f"{gain:.2f}x" if (gain := speedup(base, c)) is not None else "-"


def rows(candidates: list[CandidateResult], selected: str | None = None) -> list[dict[str, str]]:
    """One flat dict per candidate; keys are column titles."""
    base = next((c for c in candidates if c.name == BASELINE and c.latency_ms), None)
    out = []
    for c in candidates:
        row = {
            "candidate": c.name + (" *" if c.name == selected else ""),
            "backend": c.backend,
            "p50 ms": _fmt(c.latency_ms.p50) if c.latency_ms else "-",
            "p10-p90 ms": f"{_fmt(c.latency_ms.p10)}-{_fmt(c.latency_ms.p90)}" if c.latency_ms else "-",
            "speed-up": _speedup(base, c),
        }
        buckets = sorted({b for x in candidates if x.latency_ms for b in x.latency_ms.buckets}, key=bucket_order)
        for b in buckets:  # samples at their own shapes: p50 ms per shape bucket, the traffic's share in the manifest
            row[f"p50 {b}"] = _fmt(c.latency_ms.buckets.get(b)) if c.latency_ms else "-"
        for name, m in c.metrics.items():
            worst = f" (worst {_fmt(m.worst_sample)})" if m.worst_sample is not None else ""
            row[name] = f"{_fmt(m.value)}{worst} {'ok' if m.passed else 'FAIL'}"
        row["in ranges"] = "yes" if c.passed else "no"
        row["eligible"] = "yes" if c.eligible else "no"
        row["why not"] = "; ".join(c.reasons)
        if c.notes:
            row["notes"] = "; ".join(c.notes)
        out.append(row)
    return out


def ranges(candidates: list[CandidateResult]) -> list[str]:
    """`metric: range` lines (ranges relative to the reference are resolved to numbers)."""
    seen: dict[str, str] = {}
    for c in candidates:
        for name, m in c.metrics.items():
            seen.setdefault(name, m.range)
    return [f"{k}: {v}" for k, v in seen.items()]


def tuning_markdown(tuning: TuningInfo) -> str:
    """The tuner's per-task table, slowest share first: where the latency is, so the next pass can be chosen
    from data (weighted = best latency x how often the model runs the kernel)."""
    lines = [f"## TVM tuning: {tuning.trials_run} trials ({tuning.failed_trials} failed), stopped by "
             f"{tuning.stopped_by}" + (f", estimated {tuning.estimated_ms:.3g} ms" if tuning.estimated_ms else ""),
             "", "| task | weight | trials | failed | from us | best us | weighted us | GFLOP/s | int8 peak |",
             "|---" * 9 + "|"]
    from kiln.compiler.int8.peak import flag
    from kiln.compiler.int8.peak import share as share_of

    peak = tuning.int8.peak_gops if tuning.int8 else None
    for t in sorted(tuning.per_task, key=lambda t: -(t.best_us or float("inf")) * t.weight):
        best = t.best_us
        gflops = f"{t.flop / best / 1e3:.1f}" if best and t.flop else "-"
        share = flag(share_of(t.flop / best / 1e3, peak)) if t.int8 and best and t.flop else "-"
        start = _fmt(t.start_us) if t.start_us else "-"
        lines.append(f"| {t.name} | {t.weight:g} | {t.trials} | {t.failed_trials} | {start} | {_fmt(best)} | "
                     f"{_fmt(best * t.weight) if best else '-'} | {gflops} | {share} |")
    if tuning.int8:
        i8 = tuning.int8
        lines += ["", f"int8 kernels: {i8.intrinsic} on {i8.isa} ({'exact' if i8.exact else 'int16 sums saturate'})"
                  + (f", peak {i8.peak_gops:g} GOP/s at the CPU's base clock (kiln.compiler.int8.peak; a VM's "
                     "`cpu MHz` is its nominal clock: above 100 % is a measurement problem, not a share)"
                     if i8.peak_gops else ", no int8 peak known for this CPU (kiln.compiler.int8.peak)")
                  + f"; lowered: {', '.join(i8.lowered)}"
                  + (f"; not lowered: {'; '.join(i8.not_lowered)}" if i8.not_lowered else "")]
    if tuning.pipeline:
        lines += ["", "kiln graph passes applied: " + ", ".join(tuning.pipeline)]
    return "\n".join(lines)


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


def svg_plot(candidates: list[CandidateResult], metric: str | None = None, selected: str | None = None) -> str:
    """Speed vs accuracy: p50 latency (x, log scale) against one metric (y; default: the one that varies most
    between candidates). Green: published; blue: inside every range; red: outside a range."""
    import math
    from html import escape

    measured = [c for c in candidates if c.latency_ms and c.metrics]
    if metric is None:
        def spread(name: str) -> float:
            vals = [c.metrics[name].value for c in measured if name in c.metrics and c.metrics[name].value is not None]
            return (max(vals) - min(vals)) / (max(abs(v) for v in vals) or 1.0) if vals else -1.0

        names = list(dict.fromkeys(n for c in measured for n in c.metrics))
        metric = max(names, key=spread) if names else "metric"
    pts = [(c, c.latency_ms.p50, c.metrics[metric].value) for c in measured
           if metric in c.metrics and c.metrics[metric].value is not None]
    w, h, pad = 640, 400, 60
    if not pts:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"><text x="20" y="40">' \
               "no measured candidates</text></svg>"
    xs = [math.log10(x) for _, x, _ in pts]
    ys = [y for _, _, y in pts]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    sx = lambda v: pad + (v - x0) / (x1 - x0) * (w - 2 * pad)  # noqa: E731
    sy = lambda v: h - pad - (v - y0) / (y1 - y0) * (h - 2 * pad)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             'font-size="12">', f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">p50 latency, ms (log scale)</text>',
             f'<text x="{pad}" y="{pad - 15}" text-anchor="middle">{escape(metric)}</text>',
             f'<text x="{pad}" y="{h - pad + 15}" text-anchor="middle">{10 ** x0:.3g}</text>',
             f'<text x="{w - pad}" y="{h - pad + 15}" text-anchor="middle">{10 ** x1:.3g}</text>',
             f'<text x="{pad - 5}" y="{h - pad}" text-anchor="end">{y0:.4g}</text>',
             f'<text x="{pad - 5}" y="{pad + 4}" text-anchor="end">{y1:.4g}</text>']
    for i, ((c, _, y), lx) in enumerate(zip(pts, xs, strict=True)):
        color = "#2a9d3a" if c.name == selected else ("#2c6fbb" if c.passed else "#c0392b")
        r = 7 if c.name == selected else 5
        ty = sy(y) - 8 - 14 * (i % 3)  # stagger labels so neighbours stay readable
        parts.append(f'<circle cx="{sx(lx):.1f}" cy="{sy(y):.1f}" r="{r}" fill="{color}"/>')
        parts.append(f'<line x1="{sx(lx):.1f}" y1="{sy(y):.1f}" x2="{sx(lx) + 6:.1f}" y2="{ty + 2:.1f}" '
                     'stroke="#999"/>')
        parts.append(f'<text x="{sx(lx) + 8:.1f}" y="{ty:.1f}">{escape(c.name)}'
                     f'{" (published)" if c.name == selected else ""}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
