"""The A/B gate's statistics: paired per-round ratios, a confidence interval for their median, and a
three-way verdict (pass, regression, inconclusive) against a tolerance.

Why paired ratios: the two sides run back to back within a round, so a load spike that slows one
round slows both, and the ratio cancels it; the drift between benches that makes a stored baseline
cry wolf (18-28 % here under load, benchmarks/README.md) never enters.

Why a distribution-free interval for the median (order statistics, exact binomial coverage) and
not a bootstrap: under load the ratios have heavy, lopsided tails; the interval [x(k), x(n-k+1)]
covers the true median with probability at least 1 - alpha for *any* continuous distribution,
with no resampling noise, while a bootstrap of the median is discrete and under-covers at the
10-30 rounds a CI job can afford.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

CONFIDENCE = 0.95
# metric -> the direction that is better; the ratio is oriented so that > 1 is always worse.
TIMED = {"ttft_ms": "lower", "ms_per_token": "lower", "prefill_tok_s": "higher", "decode_tok_s": "higher"}
MIN_ROUNDS = 6  # below this no 95 % order-statistic interval exists (0.5**5 * 2 > 0.05)


def round_orders(rounds: int, seed: int) -> list[list[tuple[str, int]]]:
    """Each round runs each side once in each of the two worker processes: two legs, (A in 0, B in 1)
    and (A in 1, B in 0), so that a speed factor of one process (benchmarks/README.md measured one
    when each process served one side) falls on both sides alike and cancels in the round's ratio.
    The order of the legs, and of the sides within each leg, is drawn afresh per round (neither side
    always runs first, after the other's cache and frequency effects); reproducible from the seed.
    Each entry is (side, process)."""
    rng = random.Random(seed)
    plan = []
    for _ in range(rounds):
        legs = [[("A", 0), ("B", 1)], [("A", 1), ("B", 0)]]
        rng.shuffle(legs)
        for leg in legs:
            rng.shuffle(leg)
        plan.append(legs[0] + legs[1])
    return plan


def round_value(a: float, b: float) -> float:
    """A side's figure for one round: the geometric mean of its run in each process, so that the
    round's ratio is the geometric mean of its two cross-process ratios, free of a per-process factor."""
    return math.sqrt(a * b)


def worse_ratio(metric: str, old: float, new: float) -> float:
    """new relative to old, oriented so that > 1 means worse (slower or less throughput)."""
    if TIMED[metric] == "lower":
        return new / old
    return old / new


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): the distribution-free interval [x(k), x(n+1-k)] for the median, with the
    largest k whose coverage 1 - 2 P(X < k) is at least `confidence`. Needs MIN_ROUNDS values."""
    xs = sorted(values)
    n = len(xs)
    if n < MIN_ROUNDS:
        raise ValueError(f"{n} paired rounds: a {confidence:.0%} interval for the median needs at least {MIN_ROUNDS}")
    alpha = 1.0 - confidence
    k = 0
    while k + 1 <= n // 2 and 2 * _binom_cdf(k, n) <= alpha:  # P(X <= k) = P(X < k+1)
        k += 1
    k = max(k, 1)
    median = (xs[(n - 1) // 2] + xs[n // 2]) / 2
    return median, xs[k - 1], xs[n - k]


@dataclass(frozen=True)
class Verdict:
    metric: str
    rounds: int
    median: float  # the median worse-ratio (1.10: 10 % worse)
    low: float
    high: float
    tolerance_pct: float
    status: str  # "PASS", "FAIL" or "INCONCLUSIVE"
    rounds_to_decide: int | None  # for INCONCLUSIVE: rounds the measured spread needs to settle it

    def to_json(self) -> dict:
        return {"metric": self.metric, "rounds": self.rounds, "median_ratio": self.median, "ci_low": self.low,
                "ci_high": self.high, "confidence": CONFIDENCE, "tolerance_pct": self.tolerance_pct,
                "status": self.status, "rounds_to_decide": self.rounds_to_decide}


def verdict(metric: str, ratios: list[float], tolerance_pct: float) -> Verdict:
    """FAIL when the whole interval lies past 1 + tolerance, PASS when it lies within it (an
    improvement passes), INCONCLUSIVE when it straddles the limit."""
    median, low, high = median_interval(ratios)
    limit = 1.0 + tolerance_pct / 100.0
    if low > limit:
        status, needed = "FAIL", None
    elif high <= limit:
        status, needed = "PASS", None
    else:
        status, needed = "INCONCLUSIVE", rounds_to_decide(ratios, median, low, high, limit)
    return Verdict(metric, len(ratios), median, low, high, tolerance_pct, status, needed)


def rounds_to_decide(ratios: list[float], median: float, low: float, high: float, limit: float) -> int | None:
    """The interval's width shrinks about as 1/sqrt(n): the rounds at which the half-width on the
    limit's side would no longer reach it. None when the median sits on the limit itself."""
    n = len(ratios)
    gap = abs(median - limit)
    if gap == 0:
        return None
    half = (median - low) if limit < median else (high - median)
    return max(n + 1, math.ceil(n * (half / gap) ** 2))


def decided(verdicts: list[Verdict]) -> bool:
    return all(v.status != "INCONCLUSIVE" for v in verdicts)


def overall(verdicts: list[Verdict]) -> str:
    """FAIL if any metric fails, else INCONCLUSIVE if any is, else PASS."""
    statuses = {v.status for v in verdicts}
    return "FAIL" if "FAIL" in statuses else "INCONCLUSIVE" if "INCONCLUSIVE" in statuses else "PASS"
