"""Levers of task adapters, measured (issue 18): KD beside the targets against SFT (`--no-teacher`) on a
task with human labels, an NF4 training base (QLoRA) against an fp32 one for adapters applied to a q8_0
base, and which layers an adapter trains (attention, MLP or both).

Starts from `benchmarks/task_adapters.py`'s output folder; each variant trains one adapter on the
default model with the demo preset changed in that one setting, and is benched on the task's held-out
split through the build's code.

    PYTHONPATH=. .venv/bin/python benchmarks/task_levers.py [--tasks-out out/bench-tasks]

JSON in benchmarks/results/task_levers.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _task_build import read_task_build  # noqa: E402
from run_info import DEFAULT_RESULTS, busy_line, environment_at_end, run_header, table  # noqa: E402

# name -> (task, teacher (KD) or not (SFT), NF4 training base, modules). The settings of the first
# three against the build's earlier defaults (KD, NF4) are in task_adapters.py's result; the rest ask
# which layers a task's adapter should train (attention, MLP or both), measured instead of assumed.
VARIANTS = {
    "intent SFT, NF4": ("intent", False, True, "all"),
    "reply KD, fp32": ("reply", True, False, "all"),
    "intent SFT, fp32": ("intent", False, False, "all"),
    "intent SFT, fp32, attention": ("intent", False, False, "attention"),
    "intent SFT, fp32, mlp": ("intent", False, False, "mlp"),
    "extract SFT, fp32": ("extract", False, False, "all"),
    "extract SFT, fp32, attention": ("extract", False, False, "attention"),
    "extract SFT, fp32, mlp": ("extract", False, False, "mlp"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks-out", type=Path, default=Path("out/bench-tasks"))
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS / "task_levers.json")
    parser.add_argument("--only", action="append", help="run this variant only (repeatable); others keep their JSON")
    args = parser.parse_args()

    from edgeft.backends.registry import get_backend
    from edgeft.presets import build_preset
    from edgeft.tasks import examples
    from edgeft.tasks.bench import bench_tasks
    from edgeft.tasks.spec import TaskSpec
    from edgeft.tasks.train import train_adapters

    header = run_header()
    built = read_task_build(args.tasks_out)
    target, artifact, reference, base_dir, base_key = built.target, built.artifact, built.reference, built.base_dir, built.base_key
    work = args.tasks_out / "work" / "levers"
    rows, results = [], {"run": header, "variants": {}}
    if args.only and args.results.is_file():  # keep the variants not rerun
        results["variants"] = json.loads(args.results.read_text()).get("variants", {})
    for name, (task, teacher, nf4, modules) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        slug = name.replace(", ", "-").replace(" ", "-").lower()
        spec = TaskSpec(slug, examples.shipped_dir() / f"{task}.jsonl", modules)
        entry = train_adapters("default", base_dir, base_dir, base_key, [spec],
                               build_preset("demo"), get_backend(target.backend), work, work,
                               base=artifact, reference=reference, target=target, teacher=teacher,
                               nf4_base=nf4).entries[0]
        row = bench_tasks(artifact, reference, target, [entry], base_dir)["tasks"][0]
        q = row["quality"]
        results["variants"][name] = {"run": header, "task": task, "method": entry["method"], "nf4_base": nf4, "modules": modules,
                                     "adapter_bytes": row["adapter_bytes"], "metric": q["metric"],
                                     "value": q["value"], "base": row["base_quality"]["value"], "records": q["records"],
                                     "examples": q.get("examples")}
        rows.append([name, q["metric"], f"{row['base_quality']['value']:.2f}", f"{q['value']:.2f}", str(q["records"])])
        results["environment"] = environment_at_end(header)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1, default=str))  # after each variant: a long run keeps its figures
    print(table(rows, ["variant", "metric", "base alone", "with adapter", "records"]))
    print(busy_line(results["environment"]))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
