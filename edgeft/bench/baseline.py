"""The CI gate: a bench result against an earlier one (the baseline), metric by metric.

Timings are compared by their medians (p90 of a handful of runs is one sample and too noisy
to gate on). A metric fails when it moved in its bad direction by more than its tolerance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from edgeft.config import Regression
from edgeft.errors import EdgeftError

# metric -> the direction that is better. Only these are gated; the rest of bench.json is context.
GATED: dict[str, str] = {
    "ttft_ms_p50": "lower",
    "ms_per_token_p50": "lower",
    "decode_tok_s_p50": "higher",
    "prefill_tok_s_p50": "higher",
    "peak_rss_mb": "lower",
    "package_mb": "lower",
    "model_mb": "lower",
    "ppl": "lower",
    "top1_agree_pct": "higher",
}
STORED_BASELINE_NOTE = ("note: a stored baseline was measured at another time, so this gate cannot tell the machine's drift "
                        "from a regression; `edgeft bench NEW --against OLD` benches both in one job, interleaved")
# Settings that change what a metric means: two results that differ here cannot be compared.
_SAME_SETTINGS = ("prompt_tokens", "new_tokens", "context", "eval_window", "eval_tokens")
# Gated metrics measured only against an unquantized export (`edgeft bench --reference`).
_NEEDS_REFERENCE = ("top1_agree_pct",)


class BenchFileError(EdgeftError):
    """A bench.json (a baseline, or one given to compare) that is missing, truncated or malformed."""


def load_bench(path: Path) -> dict:
    """Read and validate a bench.json; every problem is a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BenchFileError("no such file", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BenchFileError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path) from None
    except json.JSONDecodeError as exc:
        raise BenchFileError(f"truncated or invalid JSON ({exc.msg})", file=path, place=f"line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise BenchFileError(f"expected a JSON object, got {type(data).__name__}", file=path)
    from edgeft.bench.run import SCHEMA_VERSION

    schema = data.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise BenchFileError("missing `schema`: not a bench.json written by edgeft", file=path, place="schema")
    if schema > SCHEMA_VERSION:
        raise BenchFileError(f"schema {schema} is newer than this edgeft reads ({SCHEMA_VERSION}); upgrade edgeft", file=path, place="schema")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise BenchFileError("missing or empty `metrics`", file=path, place="metrics")
    for key, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (key in GATED and not math.isfinite(value)):
            raise BenchFileError(f"expected a number, got {value!r}", file=path, place=f"metrics.{key}")
    return data


@dataclass(frozen=True)
class GateLine:
    metric: str
    better: str  # "lower" or "higher"
    old: float
    new: float
    tolerance_pct: float

    @property
    def change_pct(self) -> float:
        if self.old == 0:
            return 0.0 if self.new == 0 else math.copysign(math.inf, self.new)
        return (self.new - self.old) / abs(self.old) * 100.0

    @property
    def worse_pct(self) -> float:
        """How far the metric moved in its bad direction, in percent (negative: it improved)."""
        return self.change_pct if self.better == "lower" else -self.change_pct

    @property
    def status(self) -> str:
        return "FAIL" if self.worse_pct > self.tolerance_pct else "PASS"

    def to_json(self) -> dict:
        return {"metric": self.metric, "better": self.better, "old": self.old, "new": self.new,
                "change_pct": self.change_pct, "tolerance_pct": self.tolerance_pct, "status": self.status}


def gate(baseline: dict, result: dict, regression: Regression, *, baseline_file: Path | str = "baseline",
         tolerance_pct: float | None = None) -> list[GateLine]:
    """Compare every gated metric present in the baseline; `tolerance_pct` overrides the profile's default
    (per-metric values in the profile's [regression] table still win)."""
    if tolerance_pct is not None:
        from dataclasses import replace

        regression = replace(regression, tolerance_pct=tolerance_pct)
    _same_settings(baseline, result.get("target") or {}, baseline_file)
    old_eval, new_eval = baseline.get("eval") or {}, result.get("eval") or {}
    if old_eval.get("sha256") and new_eval.get("sha256") and old_eval["sha256"] != new_eval["sha256"]:
        raise BenchFileError("mismatched metrics: the baseline's quality was measured on other evaluation tokens",
                             file=baseline_file, place="eval.sha256")
    old_m, new_m = baseline["metrics"], result["metrics"]
    lines = []
    for metric, better in GATED.items():
        if old_m.get(metric) is None:
            continue
        if new_m.get(metric) is None:
            hint = "; pass --reference (the unquantized export), as the baseline's run did" if metric in _NEEDS_REFERENCE else ""
            raise BenchFileError(f"mismatched metrics: the baseline has {metric}, this run did not measure it{hint}",
                                 file=baseline_file, place=f"metrics.{metric}")
        lines.append(GateLine(metric, better, float(old_m[metric]), float(new_m[metric]), regression.for_metric(metric)))
    if not lines:
        raise BenchFileError("mismatched metrics: the baseline has none of the gated metrics "
                             f"({', '.join(GATED)})", file=baseline_file, place="metrics")
    return lines


def passed(lines: list[GateLine]) -> bool:
    return all(line.status == "PASS" for line in lines)


def parse_tolerance(text: str) -> float:
    """`--tolerance 10%` or `--tolerance 10`: percent."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise EdgeftError(f"expected a percentage like 10%, got {text!r}", place="--tolerance") from None
    if not math.isfinite(value) or value <= 0:
        raise EdgeftError(f"must be a positive percentage, got {text!r}", place="--tolerance")
    return value


def _same_settings(baseline: dict, target_json: dict, baseline_file: Path | str) -> None:
    """Refuse a baseline measured with other `_SAME_SETTINGS` than `target_json` (a profile as
    `config.to_dict` writes it, or a result's `target`)."""
    old_bench = (baseline.get("target") or {}).get("bench") or {}
    new_bench = target_json.get("bench") or {}
    for key in _SAME_SETTINGS:
        if key in old_bench and key in new_bench and old_bench[key] != new_bench[key]:
            raise BenchFileError(f"mismatched metrics: the baseline was measured with [bench] {key} = {old_bench[key]}, "
                                 f"this run with {new_bench[key]}: bench with the baseline's profile (its target.toml)",
                                 file=baseline_file, place=f"target.bench.{key}")


def precheck(old: dict, target_json: dict, machine_now: dict, *, baseline_file: Path | str,
             allow_fingerprint_mismatch: bool) -> None:
    """What can be compared before measuring anything: the bench settings, the thread count and this
    machine against the baseline's. Why first: each of these ends the gate anyway, and a user should
    learn it, with the fix, in a second rather than after the bench."""
    _same_settings(old, target_json, baseline_file)
    if allow_fingerprint_mismatch:
        return
    # the machine first: on another machine, matching the thread count would not make timings comparable
    differences = fingerprint_differences(old, {"machine": machine_now}, skip=("threads",))
    if not differences:
        old_threads = (old.get("machine") or {}).get("threads")
        if old_threads is not None and machine_now.get("threads") is not None and old_threads != machine_now["threads"]:
            raise BenchFileError(f"the baseline was measured with {old_threads} threads, this run would use "
                                 f"{machine_now['threads']}: pass --threads {old_threads}", file=baseline_file,
                                 place="machine.threads")
    if differences:
        raise BenchFileError("the baseline was measured on another machine (" + "; ".join(differences) + "): its timings "
                             "are not comparable; bench both with --against, or pass --allow-fingerprint-mismatch",
                             file=baseline_file, place="machine")


def fingerprint_differences(old: dict, new: dict, *, skip: tuple[str, ...] = ()) -> list[str]:
    """What differs between the machines and runtime builds two bench results were measured on: timings
    from another CPU or another llama.cpp build are not comparable, however the gate judges them."""
    def facts(result: dict) -> dict:
        machine = result.get("machine") or {}
        runtime = machine.get("runtime") or {}
        versions = {k: v for k, v in (result.get("versions") or {}).items() if k != "edgeft"}
        return {"cpu": machine.get("cpu"), "cores": machine.get("cores"), "cpu flags": machine.get("cpu_flags"),
                "runtime system info": runtime.get("system_info"), "runtime build": runtime.get("build_key"),
                "threads": machine.get("threads"), "governor": machine.get("governor"), "library versions": versions or None}

    a, b = facts(old), facts(new)
    return [f"{k}: {a[k]} -> {b[k]}" for k in a if k not in skip and a[k] is not None and b[k] is not None and a[k] != b[k]]
