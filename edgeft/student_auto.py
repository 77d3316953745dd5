"""`--student auto`: distill only as much as the budget needs.

The candidates are the source and prunings of it by layer count. Size, latency and memory do not
depend on training, nor on *which* layers of a uniform stack are kept, so each candidate is pruned
(by the cheap `ends` pick), compiled at the target's level and benchmarked for those alone, with no
training and no quality run: seconds per candidate. The largest candidate that meets every
size/latency/memory line is the one that gets distilled (with the measured `block` pick); when the
source meets them, nothing is pruned. Largest first, stopping at the first that fits, since a smaller
student is never chosen over a larger one that fits.

The search itself is pure (`choose`), given a `measure(layers)` callable; the pipeline supplies the
measuring (prune, compile, bench) so this module touches no stage's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgeft.bench.budgets import BUDGET_METRICS, LATENCY_TRIES, TIMED_BUDGETS, BudgetLine, device_failures

# Other processes' average use, in cores, above which a timing is called the machine's rather than the model's.
BUSY_CORES = 0.5


@dataclass(frozen=True)
class StudentSearch:
    """Which layer counts `--student auto` tries: these fractions of the source's layers, rounded, largest first.

    The fractions are coarse steps, each a candidate measured in seconds; between the first step
    that fits and the one above it, the largest count that fits is found by halving (`refine`), so a
    budget that one layer less would meet does not cost the student three.

    `latency_tries`: how many times in all a candidate that fails only on time is benchmarked before it
    is rejected. Pruning cannot be undone by the final bench, and a busy machine (a CI runner, the
    test suite beside a build) once read the 135M source's TTFT as 680 ms instead of about 150 and
    pruned it to 12 layers; a model that fits must not be cut for that."""

    fractions: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
    latency_tries: int = LATENCY_TRIES
    refine: bool = True  # then halve the gap between the step that fits and the one above it


def layer_counts(n_layers: int, search: StudentSearch = StudentSearch(), period: int = 1) -> list[int]:
    """The coarse candidates: each fraction's count, moved to the nearest that keeps the model's layer
    pattern (`period`, `distill.student.layer_period`: 6 for Gemma 3, 1 for most models)."""
    from edgeft.distill.student import nearest_count

    counts = {nearest_count(n_layers, max(1, min(n_layers, round(n_layers * f))), period) for f in search.fractions}
    counts.add(n_layers)
    return sorted(counts, reverse=True)


def failed_lines(budget_lines: list[dict]) -> list[str]:
    """The size/latency/memory lines a candidate fails; quality lines are judged after training, not here."""
    return [f"{b['budget']} {b['value']:.4g} > {b['limit']:g}" for b in device_failures(budget_lines)]


def only_timing_fails(budget_lines: list[dict]) -> bool:
    """True when some size/latency/memory line fails and every failing one is a timing line."""
    fails = device_failures(budget_lines)
    return bool(fails) and all(b["budget"] in TIMED_BUDGETS for b in fails)


def settle_timing(first: dict, again: Callable[[], dict], tries: int) -> dict:
    """A candidate's measurement, re-benchmarked while only its timing lines fail, at most `tries` in all.

    Each timing metric keeps its lowest p90 over the tries: a machine's load only slows a run, so the
    least disturbed try is the best estimate of the quiet machine's time, and the final bench of the
    shipped file measures again anyway. `first` and `again()` are bench results (`metrics`,
    `budget`); the answer is `first`'s with the settled metrics, budget lines and `tries`."""
    metrics, lines = dict(first["metrics"]), first["budget"]
    others = [first.get("others_cores")]
    n = 1
    while n < tries and only_timing_fails(lines):
        result = again()
        later = result["metrics"]
        others.append(result.get("others_cores"))
        n += 1
        for key in TIMED_BUDGETS:
            if later.get(key) is not None and (metrics.get(key) is None or later[key] < metrics[key]):
                metrics[key] = later[key]
        lines = [BudgetLine(b["budget"], metrics[BUDGET_METRICS[b["budget"]]], b["limit"]).to_json()
                 if b["budget"] in TIMED_BUDGETS else b for b in lines]
    known = [c for c in others if c is not None]
    return {**first, "metrics": metrics, "budget": lines, "tries": n, "others_cores": min(known) if known else None}


def busy_warning(candidates: list[dict]) -> str | None:
    """One line when a candidate was rejected on time alone while other processes kept the machine
    busy on every try (`others_cores`, the quietest try's), so the pruning may be the machine's doing."""
    for c in candidates:
        if c.get("measured") is False or c["fits"] or not only_timing_fails(c["budget"]):
            continue
        if (c.get("others_cores") or 0.0) > BUSY_CORES:
            return (f"other processes kept {c['others_cores']:.1f} cores busy while {c['layers']} layers were timed, on "
                    f"each of {c.get('tries', 1)} tries: its latency lines, and so this pruning, may be the machine's and "
                    "not the model's; build again on a quiet machine")
    return None


def choose(n_layers: int, measure: Callable[[int], dict], search: StudentSearch = StudentSearch(), period: int = 1) -> dict:
    """Measure candidates largest first; the first that fits, refined upward (else the smallest, which fits nothing).

    `measure(layers)` returns a dict with at least `budget` (BudgetLine.to_json() dicts); the result
    lists every candidate, measured or not, the one chosen and why."""
    counts = layer_counts(n_layers, search, period)
    tried: list[dict] = []

    def run(layers: int) -> dict:
        row = {"layers": layers, **measure(layers)}
        row["fails"] = failed_lines(row["budget"])
        row["fits"] = not row["fails"]
        tried.append(row)
        return row

    chosen = None
    for layers in counts:
        if run(layers)["fits"]:
            chosen = tried[-1]
            break
    skipped = [{"layers": n, "measured": False} for n in counts[len(tried):]]
    if chosen is not None and len(tried) > 1 and search.refine:
        # Size and time grow with the layer count, so the largest count that fits lies between the
        # coarse step that fits and the one above it that does not: halve that gap.
        low, high = chosen["layers"], tried[-2]["layers"]
        while between := [k for k in range(low + period, high, period)]:
            # the upper middle: a budget that the next count up only just misses (the tight demo's, by one
            # layer) is found in one measurement, and the halving's worst case costs as many either way
            mid = between[len(between) // 2]
            if run(mid)["fits"]:
                low, chosen = mid, tried[-1]
            else:
                high = mid
    fits = chosen is not None
    chosen = chosen or tried[-1]
    tried.sort(key=lambda row: -row["layers"])
    if chosen["layers"] == n_layers:
        reason = f"the source ({n_layers} layers) meets every size, latency and memory budget: nothing is pruned"
    elif fits:
        larger = min((row for row in tried if row["layers"] > chosen["layers"]), key=lambda row: row["layers"])
        reason = (f"{chosen['layers']} of {n_layers} layers is the largest student that meets every size, latency and "
                  f"memory budget ({larger['layers']} layers fails {larger['fails'][0]})")
    else:
        reason = (f"no candidate meets the size, latency and memory budgets, down to {chosen['layers']} of {n_layers} "
                  f"layers ({chosen['fails'][0]}); the smallest is distilled and the budget will fail")
    return {"teacher_layers": n_layers, "layers": chosen["layers"], "pruned": chosen["layers"] < n_layers, "fits": fits,
            "reason": reason, "candidates": tried + skipped}
