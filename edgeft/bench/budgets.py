"""Budget checks: each `[budget]` key of a profile against the measured metric of the same meaning."""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgeft.config import Budget

# budget key -> metric key in bench.json. Every budget is an upper limit.
BUDGET_METRICS = {
    "ttft_ms_p90": "ttft_ms_p90",
    "package_mb": "package_mb",
    "ms_per_token_p90": "ms_per_token_p90",
    "peak_rss_mb": "peak_rss_mb",
    "ppl_increase_pct": "ppl_increase_pct",
    "ppl_vs_source_pct": "ppl_vs_source_pct",
    "answer_ppl_vs_source_pct": "answer_ppl_vs_source_pct",
}
# Budgets on quality: judged on the finished artifact, never on an untrained candidate (`student_auto`).
QUALITY_BUDGETS = ("ppl_increase_pct", "ppl_vs_source_pct", "answer_ppl_vs_source_pct")
# Budgets that a busy machine can fail: load only ever adds time, never bytes.
TIMED_BUDGETS = ("ttft_ms_p90", "ms_per_token_p90")
# How many latency runs in all a decision on a timing line may take while it fails (`run.settled_latency`,
# `student_auto.settle_timing`): a busy moment passes, load that lasts does not.
LATENCY_TRIES = 3


@dataclass(frozen=True)
class BudgetLine:
    key: str
    value: float | None  # None: the metric was not measured
    limit: float

    @property
    def status(self) -> str:
        if self.value is None:
            return "NOT MEASURED"
        return "PASS" if self.value <= self.limit else "FAIL"

    def to_json(self) -> dict:
        return {"budget": self.key, "value": self.value, "limit": self.limit, "status": self.status}


def check(metrics: dict[str, float], budget: Budget) -> list[BudgetLine]:
    lines = []
    for f in fields(Budget):
        limit = getattr(budget, f.name)
        if limit is None:
            continue
        lines.append(BudgetLine(key=f.name, value=metrics.get(BUDGET_METRICS[f.name]), limit=limit))
    return lines


def device_failures(lines: list[dict]) -> list[dict]:
    """The failing size, latency and memory lines (BudgetLine.to_json() dicts): what a device cannot
    hold, as opposed to quality, which is judged on a finished artifact."""
    return [b for b in lines if b["budget"] not in QUALITY_BUDGETS and b["status"] == "FAIL"]


def timing_excess(metrics: dict[str, float], budget: Budget) -> float:
    """The worst timing line's value over its limit (above 1: it fails); 0 when no timing line is set
    or measured. Ranks re-runs of one latency bench: the lowest is the least disturbed by load."""
    ratios = [metrics[BUDGET_METRICS[key]] / getattr(budget, key) for key in TIMED_BUDGETS
              if getattr(budget, key) is not None and metrics.get(BUDGET_METRICS[key]) is not None]
    return max(ratios, default=0.0)


def all_pass(lines: list[BudgetLine]) -> bool:
    """A budget whose metric was not measured does not fail the build; it is shown as NOT MEASURED."""
    return all(line.status != "FAIL" for line in lines)
