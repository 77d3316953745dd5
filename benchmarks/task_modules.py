"""Which layers should a task's adapter train (issue 18)? Attention only, MLP only, or both, on the
shipped intent and extract tasks, measured instead of assumed.

Starts from `benchmarks/task_adapters.py`'s output folder (the default model's base at the profile's
level and each task's prepared data). For each task and each choice, one adapter is trained on the
base with the build's demo preset and benched on the task's held-out split through the build's code.

    PYTHONPATH=. .venv/bin/python benchmarks/task_modules.py [--tasks-out out/bench-tasks]

JSON in benchmarks/results/task_modules.json.
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

TASKS = ("intent", "extract")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks-out", type=Path, default=Path("out/bench-tasks"))
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS / "task_modules.json")
    args = parser.parse_args()

    from edgeft.backends.registry import adapter_suffix, get_backend
    from edgeft.presets import build_preset
    from edgeft.tasks import examples
    from edgeft.tasks.bench import bench_tasks
    from edgeft.tasks.spec import MODULES, TaskSpec
    from edgeft.tasks.train import train_adapters

    header = run_header()
    built = read_task_build(args.tasks_out)
    target, artifact, reference, base_dir, base_key = built.target, built.artifact, built.reference, built.base_dir, built.base_key
    work = args.tasks_out / "work" / "modules"
    rows, results = [], {"run": header, "tasks": {}}
    for task in TASKS:
        specs = [TaskSpec(f"{task}-{kind}", examples.shipped_dir() / f"{task}.jsonl", kind) for kind in MODULES]
        entries = train_adapters("default", base_dir, base_dir, base_key, specs, build_preset("demo"),
                                 get_backend(target.backend), adapter_suffix(target.backend), work, work, base=artifact)
        measured = bench_tasks(artifact, reference, target, entries, base_dir)
        results["tasks"][task] = {}
        for spec, row in zip(specs, measured["tasks"]):
            q = row["quality"]
            results["tasks"][task][spec.modules] = {"metric": q["metric"], "value": q["value"], "exact_pct": q.get("exact_pct"),
                                                    "records": q["records"], "adapter_bytes": row["adapter_bytes"],
                                                    "base": row["base_quality"]["value"]}
            rows.append([task, spec.modules, q["metric"], f"{row['base_quality']['value']:.1f}", f"{q['value']:.1f}",
                         f"{row['adapter_bytes'] / 1e6:.2f}"])
    results["environment"] = environment_at_end(header)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1, default=str))
    print(table(rows, ["task", "modules", "metric", "base", "with adapter", "adapter MB"]))
    print(busy_line(results["environment"]))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
