"""Tables for people: the metrics and the budget verdicts of one bench result."""

from __future__ import annotations

SPREAD_WARN_CV = 0.10  # above this run-to-run spread, medians are not trustworthy

_ROWS = [
    ("time to first token", "ttft_ms", "ms"),
    ("time per token", "ms_per_token", "ms"),
    ("decode speed", "decode_tok_s", "tok/s"),
    ("prefill speed", "prefill_tok_s", "tok/s"),
]


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def metrics_table(result: dict) -> str:
    m = result["metrics"]
    rows = []
    for label, key, unit in _ROWS:
        cv = m.get(f"{key}_cv", 0.0)
        note = f"spread {cv:.0%}: noisy, add runs" if cv > SPREAD_WARN_CV else f"spread {cv:.0%}"
        rows.append([label, _fmt(m.get(f"{key}_p50"), unit), _fmt(m.get(f"{key}_p90"), unit), note])
    rows.append(["peak memory (RSS)", _fmt(m.get("peak_rss_mb"), "MB"), "", f"model share {_fmt(m.get('model_rss_mb'), 'MB')}"])
    rows.append(["package size", _fmt(m.get("package_mb"), "MB"), "", ""])
    return table(rows, ["metric", "median", "p90", ""])


def budget_table(result: dict) -> str:
    rows = [[b["budget"], _fmt(b["value"]), _fmt(b["limit"]), b["status"]] for b in result["budget"]]
    if not rows:
        return "no budget set in the target profile"
    return table(rows, ["budget", "value", "limit", "result"])
