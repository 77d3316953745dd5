"""Continual updates without forgetting (issue 18): an intent adapter updated on the extract task, four
ways, and what each keeps of intent.

Starts from `benchmarks/task_adapters.py`'s output (the default model's base and its intent adapter,
trained with its Fisher stored). Each variant continues the intent adapter on extract's training split
(`edgeft distill --continue`): plain continued training, replay alone (old records mixed in), EWC
alone, EWC with replay. Each result is exported as a GGUF adapter and scored on the shipped base at the
profile's level: intent's exact-label accuracy before and after (forgetting) and extract's field match.

    PYTHONPATH=. .venv/bin/python benchmarks/continual_ewc.py [--tasks-out out/bench-tasks] [--out out/bench-ewc]

JSON in benchmarks/results/continual_ewc.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _task_build import read_task_build  # noqa: E402
from run_info import DEFAULT_RESULTS, busy_line, environment_at_end, run_header, table  # noqa: E402

VARIANTS = {  # name -> (ewc lambda, replay ratio)
    "plain": (0.0, 0.0),
    "replay 0.25": (0.0, 0.25),
    "ewc 1e4": (1e4, 0.0),
    "ewc 1e6": (1e6, 0.0),
    "ewc 1e4 + replay 0.25": (1e4, 0.25),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks-out", type=Path, default=Path("out/bench-tasks"))
    parser.add_argument("--out", type=Path, default=Path("out/bench-ewc"))
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS / "continual_ewc.json")
    args = parser.parse_args()

    from edgeft import distill
    from edgeft.backends.registry import get_backend
    from edgeft.distill.records import open_prepared
    from edgeft.presets import build_preset
    from edgeft.tasks.measure import fitting, split_records, task_quality
    from edgeft.tasks.metrics import kind_of

    header = run_header()
    built = read_task_build(args.tasks_out)
    target, artifact, base_dir = built.target, built.artifact, built.base_dir
    old, new = built.entries["intent"], built.entries["extract"]
    backend = get_backend(target.backend)

    def scores(adapter: Path | None) -> dict:
        runner = backend.load(artifact, target)
        try:
            runner.use_adapter(adapter)
            eos = {int(runner.metadata().eos_token_id)}
            out = {}
            for task in (old, new):
                records = fitting(split_records(Path(task["eval_split"]), Path(task["eval_split"]).with_name("eval.records.jsonl")),
                                  target.bench.context)
                out[task["task"]] = task_quality(runner, records, kind_of(records[0]["task_type"]), eos)["value"]
            return out
        finally:
            runner.close()

    rows, results = [], {"run": header, "old_task": "intent", "new_task": "extract", "variants": {}}
    before = scores(Path(old["adapter"]))
    results["intent_adapter_before"] = before
    preset = build_preset("demo").distill
    for name, (lam, ratio) in VARIANTS.items():
        folder = args.out / name.replace(" ", "_").replace("+", "and")
        config = replace(preset, continue_from=old["peft_adapter"], ewc_lambda=lam, replay_ratio=ratio, layer_pick="even",
                         student=None, alpha=0.5, own_answer_tokens=0)  # as measured: a continual update has no on-policy records
        adapter_dir = distill.run(str(base_dir), open_prepared(Path(new["eval_split"]).parent), folder, config)
        gguf = backend.export_adapter(adapter_dir, base_dir, folder / "adapter.gguf", base=artifact)
        after = scores(gguf)
        summary = json.loads((folder / "distill.json").read_text())
        results["variants"][name] = {"ewc_lambda": lam, "replay_ratio": ratio, "after": after,
                                     "intent_forgetting_points": before["intent"] - after["intent"],
                                     "continual": summary["continual"], "final_ewc": summary.get("final_loss")}
        rows.append([name, f"{before['intent']:.1f}", f"{after['intent']:.1f}", f"{before['intent'] - after['intent']:+.1f}",
                     f"{before['extract']:.1f}", f"{after['extract']:.1f}"])
    results["environment"] = environment_at_end(header)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1, default=str))
    print(table(rows, ["update", "intent acc before", "intent acc after", "forgetting (points)", "extract fields before",
                       "extract fields after"]))
    print(busy_line(results["environment"]))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
