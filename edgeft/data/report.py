"""The data report: what each step removed and why, and token-length statistics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

EXAMPLES_PER_STEP = 5


@dataclass
class Step:
    """One cleaning step: how many records it removed, the count per reason, and the first few cases."""

    name: str
    removed: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def remove(self, place: str, reason: str, **details: Any) -> None:
        self.removed += 1
        self.reasons[reason] += 1
        if len(self.examples) < EXAMPLES_PER_STEP:
            self.examples.append({"place": place, "reason": reason, **details})

    def to_json(self) -> dict[str, Any]:
        return {"step": self.name, "removed": self.removed, "reasons": dict(self.reasons.most_common()),
                "examples": self.examples, **self.extra}


def length_stats(lengths: Sequence[int]) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)

    def pct(q: float) -> int:
        return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]

    return {"count": len(s), "min": s[0], "p50": pct(0.5), "p90": pct(0.9), "max": s[-1], "mean": round(sum(s) / len(s), 1)}


def histogram(lengths: Sequence[int], *, bins: int = 8) -> list[dict[str, int]]:
    """Equal-width bins from the shortest to the longest length; each bin is [lo, hi)."""
    if not lengths:
        return []
    low, top = min(lengths), max(lengths) + 1
    width = max(1, -(-(top - low) // bins))
    counts = Counter(min((n - low) // width, bins - 1) for n in lengths)
    return [{"lo": low + b * width, "hi": low + (b + 1) * width, "count": counts.get(b, 0)} for b in range(bins)
            if low + b * width < top]


def histogram_text(hist: list[dict[str, int]], *, width: int = 40) -> str:
    if not hist:
        return "  (no records)"
    peak = max(h["count"] for h in hist) or 1
    labels = [f"{h['lo']}-{h['hi'] - 1}" for h in hist]
    lab = max(len(x) for x in labels)
    return "\n".join(f"  {x:>{lab}} | {'#' * round(width * h['count'] / peak):<{width}} {h['count']}" for x, h in zip(labels, hist))
