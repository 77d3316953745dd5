"""Latency and memory of an artifact, measured in a child process (see worker.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from edgeft.backends.base import Artifact
from edgeft.bench.stats import summarize
from edgeft.config import Target
from edgeft.child import exit_failure
from edgeft.errors import EdgeftError

T = TypeVar("T")


def run_worker(artifact: Artifact, target: Target, **extra) -> dict:
    """Run the worker in a child process; `extra` goes into its request (e.g. mode="quality")."""
    with tempfile.TemporaryDirectory(prefix="edgeft-bench-") as tmp:
        tmp_path = Path(tmp)
        profile = tmp_path / f"{target.name}.toml"
        profile.write_text(target.to_toml(), encoding="utf-8")
        request = tmp_path / "request.json"
        result = tmp_path / "result.json"
        request.write_text(json.dumps({"target": str(profile), "artifact": artifact.to_json(), **extra}))
        proc = subprocess.run(
            [sys.executable, "-m", "edgeft.bench.worker", str(request), str(result)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not result.exists():
            # A signal is named with its likely cause (SIGILL: a runtime built for another CPU); any other
            # failure is internal (exit 1), never bad input: the worker reports bad input in its result.
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise exit_failure(proc.returncode, f"the benchmark process for {artifact.path}", tail[0])
        data = json.loads(result.read_text())
    if "error" in data:
        raise EdgeftError(data["error"])
    return data


def least_disturbed(measure: Callable[[], T], excess: Callable[[T], float], tries: int,
                    again: Callable[[T, int], None]) -> tuple[list[T], int]:
    """`measure()`, run again while its result's `excess` is above 1 (a timing line fails), at most
    `tries` runs in all; every result, and the index of the one with the lowest excess. `again(last,
    n)` says why run n is made. Why: load only ever adds time, so on a busy machine the least
    disturbed run is the best estimate of the model's own."""
    results: list[T] = []
    excesses: list[float] = []
    while len(results) < max(1, tries):
        if results:
            again(results[-1], len(results) + 1)
        results.append(measure())
        excesses.append(excess(results[-1]))
        if excesses[-1] <= 1.0:
            break
    return results, min(range(len(results)), key=excesses.__getitem__)


def latency_metrics(raw: dict) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Per-run figures and their summaries from the worker's per-token timestamps.

    TTFT is prompt submission to the first generated token (prefill plus one sampling step);
    ms/token is the mean gap between later tokens (decode only)."""
    per_run = []
    prompt_tokens = raw["prompt_tokens"]
    for run in raw["runs"]:
        times = run["token_times"]
        ttft = times[0]
        decode_gaps = len(times) - 1
        decode_s = times[-1] - times[0]
        per_run.append(
            {
                "ttft_ms": ttft * 1000.0,
                "ms_per_token": decode_s * 1000.0 / decode_gaps if decode_gaps else float("nan"),
                "decode_tok_s": decode_gaps / decode_s if decode_s > 0 else float("nan"),
                "prefill_tok_s": prompt_tokens / ttft if ttft > 0 else float("nan"),
            }
        )
    metrics: dict[str, float] = {}
    for key in ("ttft_ms", "ms_per_token", "decode_tok_s", "prefill_tok_s"):
        s = summarize([r[key] for r in per_run])
        metrics[f"{key}_p50"] = s["p50"]
        metrics[f"{key}_p90"] = s["p90"]
        metrics[f"{key}_cv"] = s["cv"]
    metrics["peak_rss_mb"] = raw["peak_rss_mb"]
    metrics["model_rss_mb"] = raw["peak_rss_mb"] - raw["rss_before_load_mb"]
    return metrics, per_run


def runtime_counters(raw: dict) -> dict[str, float] | None:
    """The runtime's own decode speed over the same runs, beside ours aggregated the same way
    (all decode steps over all decode time), so the two clocks can be compared directly."""
    perf = raw.get("perf_counters") or []
    if not perf:
        return None
    eval_ms = sum(p["eval_ms"] for p in perf)
    n_eval = sum(p["n_eval"] for p in perf)
    steps = sum(len(r["token_times"]) - 1 for r in raw["runs"])
    seconds = sum(r["token_times"][-1] - r["token_times"][0] for r in raw["runs"])
    runtime = n_eval / (eval_ms / 1000.0) if eval_ms > 0 else float("nan")
    harness = steps / seconds if seconds > 0 else float("nan")
    return {"decode_tok_s": runtime, "n_eval": n_eval, "eval_ms": eval_ms,
            "harness_decode_tok_s": harness, "harness_decode_steps": steps,
            "harness_vs_runtime_pct": (harness / runtime - 1.0) * 100.0 if runtime > 0 else float("nan")}
