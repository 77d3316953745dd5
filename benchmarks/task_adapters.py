"""Task adapters on one base (issue 18): the shipped three-task example, per task, for three models:
the base with no adapter, one shared adapter trained on all tasks mixed, and the task's own adapter.

`edgeft build --no-distill --target gguf --task intent=... --task extract=... --task reply=...` makes
the base (the default model at the profile's level) and the per-task adapters and benches them; the
shared adapter is then trained on the union of the three tasks' *training* splits (so no held-out
record of any task is in it) and benched on each task's held-out split through the same code.

    PYTHONPATH=. .venv/bin/python benchmarks/task_adapters.py [--model default] [--out out/bench-tasks]

JSON in benchmarks/results/task_adapters.json; timings are only as quiet as the machine (the load is
printed at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_info import DEFAULT_RESULTS, busy_line, environment_at_end, run_header, table  # noqa: E402


def mixed_file(tasks: list, path: Path) -> Path:
    """Every task's records in one file, tasks interleaved. The data stage splits by a hash of each
    record's own input, so every record lands on the same side as in its task's own build: the
    shared adapter trains on exactly the union of the per-task training splits, and each task's
    held-out records stay held out."""
    rows = [[line for line in t.data.read_text(encoding="utf-8").splitlines() if line.strip()] for t in tasks]
    mixed = [r for group in zip(*rows) for r in group] + [r for group in rows for r in group[min(map(len, rows)):]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in mixed), encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--target", default="gguf")
    parser.add_argument("--out", type=Path, default=Path("out/bench-tasks"))
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS / "task_adapters.json")
    args = parser.parse_args()

    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import get_backend, info
    from edgeft.config import load_target
    from edgeft.pipeline import build
    from edgeft.presets import build_preset
    from edgeft.tasks import examples
    from edgeft.tasks.bench import bench_tasks
    from edgeft.tasks.spec import TaskSpec
    from edgeft.tasks.train import train_adapters

    header = run_header()
    target = load_target(args.target)
    tasks = [TaskSpec(name, examples.shipped_dir() / f"{name}.jsonl") for name in examples.TASKS]
    result = build(args.model, target, args.out, distill=False, tasks=tasks)
    manifest = json.loads((args.out / "manifest.json").read_text())
    entries = manifest["stages"]["tasks"]["adapters"]
    per_task = result.bench["tasks"]
    base_dir = Path(manifest["stages"]["source"].get("hf_dir") or args.out / "work" / "source-hf")
    if not base_dir.is_dir():
        base_dir = Path(args.model)
    artifact = Artifact(path=result.artifact, backend=target.backend, quant=target.quant)
    reference = Artifact(path=Path(manifest["stages"]["compile"]["reference"]), backend=target.backend,
                         quant=info(target.backend).reference_level(target.quant))

    mixed = mixed_file(tasks, args.out / "work" / "shared.jsonl")
    shared = train_adapters(args.model, base_dir, base_dir, entries[0]["base_key"], [TaskSpec("shared", mixed)],
                            build_preset("demo"), get_backend(target.backend),
                            args.out / "work", args.out, base=artifact, reference=reference, target=target).entries[0]
    shared_bench = bench_tasks(artifact, reference, target, [{**shared, "task": e["task"], "eval_split": e["eval_split"]}
                                                             for e in entries], base_dir)

    rows, out = [], {"run": header, "model": args.model, "target": target.name, "quant": target.quant,
                     "base_bytes": per_task["base_bytes"], "package_bytes": per_task["package_bytes"],
                     "switch_ms": per_task["switch_ms"], "tasks": []}
    for mine, theirs in zip(per_task["tasks"], shared_bench["tasks"]):
        q = mine["quality"]
        rows.append([mine["task"], q["metric"], f"{mine['base_quality']['value']:.2f}", f"{theirs['quality']['value']:.2f}",
                     f"{q['value']:.2f}", f"{mine['adapter_bytes'] / 1e6:.2f}", f"{mine['ttft_ms_p90']:.1f}",
                     f"{mine['proof']['kl_adapter_vs_merged']:.1e} / {mine['proof']['kl_base_vs_merged']:.1e}"])
        out["tasks"].append({"task": mine["task"], "metric": q["metric"], "records": q["records"],
                             "base": mine["base_quality"], "shared": theirs["quality"], "per_task": q,
                             "adapter_bytes": mine["adapter_bytes"], "shared_adapter_bytes": theirs["adapter_bytes"],
                             "ttft_ms_p90": mine["ttft_ms_p90"], "ms_per_token_p90": mine["ms_per_token_p90"],
                             "proof": mine["proof"], "shared_proof": theirs["proof"]})
    out["base_ttft_ms_p90"] = per_task["base_ttft_ms_p90"]
    out["environment"] = environment_at_end(header)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=1, default=str))
    print(table(rows, ["task", "metric", "base", "shared adapter", "own adapter", "adapter MB", "ttft p90 ms",
                       "KL on / off (vs merged)"]))
    print(f"base {per_task['base_bytes'] / 1e6:.1f} MB; every adapter together "
          f"{(per_task['package_bytes'] - per_task['base_bytes']) / 1e6:.2f} MB; switch {per_task['switch_ms']:.3f} ms")
    print(busy_line(out["environment"]))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
