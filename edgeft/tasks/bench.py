"""The per-task bench: one child process measures every adapter on the shipped base; this side turns
its runs into figures, budget lines and the proof's verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edgeft.backends.base import Artifact
from edgeft.bench import budgets, latency
from edgeft.config import Target

MB = 1_000_000
# Budget keys judged per task, on the figures measured with that task's adapter active.
PER_TASK_BUDGETS = ("ttft_ms_p90", "ms_per_token_p90")
FEW_RECORDS = 20  # below this many held-out records a task's accuracy is flagged as a rough figure


def bench_tasks(artifact: Artifact, reference: Artifact, target: Target, entries: Sequence[dict], base_dir: Path) -> dict:
    """`entries` are `train.train_adapters`' manifest entries (adapter file, peft folder, eval split)."""
    tasks = [{"task": e["task"], "adapter": e["adapter"], "peft_adapter": e["peft_adapter"], "base_dir": str(base_dir),
              "eval_ids": e["eval_split"], "eval_text": str(Path(e["eval_split"]).with_name("eval.records.jsonl"))}
             for e in entries]
    first: list[dict] = []

    def measure() -> dict:
        raw = latency.run_worker(artifact, target, mode="tasks", reference=reference.to_json(), tasks=tasks,
                                 timing_only=bool(first))
        if not first:
            first.append(raw)
            return raw
        return with_timings(first[0], raw)

    raw, runs = _settled(measure, target)
    memory = _memory(raw)
    base_metrics, _ = latency.latency_metrics({"runs": raw["base_runs"], **memory})
    rows, lines = [], []
    for entry, res in zip(entries, raw["tasks"]):
        metrics, _ = latency.latency_metrics({"runs": res["runs"], **memory})
        adapter_bytes = Path(entry["adapter"]).stat().st_size
        proof = res["proof"]
        row = {"task": entry["task"], "kind": res["kind"], "modules": entry["modules"], "method": entry["method"],
               "adapter": Path(entry["adapter"]).name, "adapter_bytes": adapter_bytes,
               "adapter_load_ms": res["adapter_load_ms"], "quality": res["quality"], "base_quality": res["base_quality"],
               "proof": proof, **{k: metrics[k] for k in ("ttft_ms_p50", "ttft_ms_p90", "ms_per_token_p50", "ms_per_token_p90")}}
        rows.append(row)
        for key in PER_TASK_BUDGETS:
            limit = getattr(target.budget, key)
            if limit is not None:
                lines.append({**budgets.BudgetLine(key=key, value=metrics.get(key), limit=limit).to_json(), "task": entry["task"]})
        lines.append({"budget": "adapter_applied", "task": entry["task"], "value": proof["kl_adapter_vs_merged"],
                      "limit": proof["bound"], "status": "PASS" if proof["matches"] and proof["applied"] else "FAIL"})
    package = artifact.package_bytes() + sum(r["adapter_bytes"] for r in rows)
    if target.budget.package_mb is not None:
        lines.append({**budgets.BudgetLine(key="package_mb", value=package / MB, limit=target.budget.package_mb).to_json(),
                      "task": "base + every adapter"})
    return {"tasks": rows, "switch_ms": raw["switch_ms"], "package_bytes": package, "base_bytes": artifact.package_bytes(),
            "base_ttft_ms_p90": base_metrics["ttft_ms_p90"], "base_ms_per_token_p90": base_metrics["ms_per_token_p90"],
            "peak_rss_mb": raw["peak_rss_mb"],  # the process holding the base and every adapter
            "latency_runs": runs,  # above 1: a task's timing line failed and the least disturbed run is shown
            "budget": lines, "pass": all(line["status"] != "FAIL" for line in lines)}


def _memory(raw: dict) -> dict:
    """The worker's figures that every `latency_metrics` call of one run shares."""
    return {k: raw[k] for k in ("peak_rss_mb", "rss_before_load_mb", "prompt_tokens")}


def with_timings(full: dict, timed: dict) -> dict:
    """A full worker run's quality and proof with another run's timings, switch time and memory: a run
    made again for its timing only (quality and the proof do not depend on load)."""
    tasks = [{**task, "runs": again["runs"]} for task, again in zip(full["tasks"], timed["tasks"], strict=True)]
    return {**full, **{k: v for k, v in timed.items() if k != "tasks"}, "tasks": tasks}


def _settled(measure, target: Target) -> tuple[dict, int]:
    """The tasks worker's run, run again while some task's timing line fails (`latency.least_disturbed`,
    as the base's bench does); the run whose worst task timing is lowest against its limit, and how
    many runs were made."""
    from edgeft.progress import status

    def excess(raw: dict) -> float:
        memory = _memory(raw)
        return max((budgets.timing_excess(latency.latency_metrics({"runs": res["runs"], **memory})[0], target.budget)
                    for res in raw["tasks"]), default=0.0)

    def again(_: dict, n: int) -> None:
        status(f"task bench: a task's timing line failed; measuring again in case the machine was busy "
               f"({n} of {budgets.LATENCY_TRIES}) ...")

    runs, kept = latency.least_disturbed(measure, excess, budgets.LATENCY_TRIES, again)
    return runs[kept], len(runs)


def table(result: dict) -> str:
    """Per task: quality with its adapter against the base alone, latency, bytes, and the proof."""
    from edgeft.bench.report import table as render

    out = []
    for r in result["tasks"]:
        q, b, p = r["quality"], r["base_quality"], r["proof"]
        unit = "ppl" if q["metric"] == "target_ppl" else "%"
        out.append([r["task"], q["metric"], str(q.get("records", "?")), f"{b['value']:.1f} {unit}", f"{q['value']:.1f} {unit}",
                    f"{r['ttft_ms_p90']:.1f} ms", f"{r['ms_per_token_p90']:.2f} ms", f"{r['adapter_bytes'] / MB:.2f} MB",
                    f"KL {p['kl_adapter_vs_merged']:.1e} vs {p['kl_base_vs_merged']:.1e} off: "
                    + ("applied" if p["matches"] and p["applied"] else "NOT APPLIED")])
    head = (f"task adapters on one base ({result['base_bytes'] / MB:.1f} MB; package with every adapter "
            f"{result['package_bytes'] / MB:.1f} MB; switch {result['switch_ms']:.3f} ms)"
            if result["switch_ms"] is not None else
            f"task adapter on one base ({result['base_bytes'] / MB:.1f} MB; package {result['package_bytes'] / MB:.1f} MB)")
    if result.get("latency_runs", 1) > 1:
        head += f"; timings: the least disturbed of {result['latency_runs']} runs, as a task's timing line failed"
    lines = [[line["task"], line["budget"], f"{line['value']:.3g}", f"{line['limit']:g}", line["status"]]
             for line in result["budget"]]
    few = [f"{r['task']} ({r['quality']['records']})" for r in result["tasks"]
           if r["quality"].get("metric") != "target_ppl" and r["quality"].get("records", FEW_RECORDS) < FEW_RECORDS]
    if few:  # one record moves an accuracy by 100/n points: say so beside it
        head += (f"\nfew held-out records for an accuracy: {', '.join(few)}; one record moves it by 100/n points "
                 "(more task data, or a larger eval split, makes it a measurement)")
    return (head + "\n" + render(out, ["task", "metric", "held-out", "base alone", "with adapter", "ttft p90", "ms/token p90",
                                       "adapter", "runtime vs merged (reference export)"])
            + "\n\n" + render(lines, ["task", "budget", "value", "limit", "result"]))
