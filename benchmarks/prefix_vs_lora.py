"""Prefix tuning against LoRA at the same number of trainable parameters, on the shipped tasks (issue 18).

On the default model (SmolLM2-135M: 30 layers, 3 KV heads of 64), a 20-token prefix holds
20 x 30 x 2 x 192 = 230,400 values; LoRA of rank 2 on the four attention projections holds
2 x 30 x (576+576 + 576+192 + 576+192 + 576+576) = 230,400 too. Both train with the build's loop,
data, loss and demo preset (the prefix also at a higher learning rate, the usual advice for prefix
tuning, and from peft's random start as well as from text, the build's default), on the ONNX backend, the one whose runtime runs both: the LoRA as an `.onnx_adapter`, the
prefix as the initial KV cache. Each is benched on the task's held-out split through the build's code,
with the proof that the runtime gives the peft model's logits.

    PYTHONPATH=. .venv/bin/python benchmarks/prefix_vs_lora.py [--model default] [--out out/bench-prefix]

JSON in benchmarks/results/prefix_vs_lora.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_info import DEFAULT_RESULTS, busy_line, environment_at_end, run_header, table  # noqa: E402

# name -> (adapter, LoRA rank, learning rate (None: the demo preset's), how the prefix starts)
VARIANTS = {
    "LoRA r2, attention": ("lora", 2, None, None),
    "prefix 20, random start": ("prefix", None, None, "random"),
    "prefix 20, random start, lr 1e-2": ("prefix", None, 1e-2, "random"),
    "prefix 20": ("prefix", None, None, "text"),
    "prefix 20, lr 1e-2": ("prefix", None, 1e-2, "text"),
}


def trainable(peft_dir: Path) -> int:
    """Values the adapter trained (what it stores)."""
    import math

    from safetensors import safe_open

    with safe_open(str(peft_dir / "adapter_model.safetensors"), framework="numpy") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--out", type=Path, default=Path("out/bench-prefix"))
    parser.add_argument("--data-from", type=Path, default=Path("out/bench-tasks"),
                        help="a task_adapters.py output folder whose prepared task data is reused when present")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS / "prefix_vs_lora.json")
    parser.add_argument("--only", action="append", help="run this variant only (repeatable); others keep their JSON")
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
    build(args.model, target, args.out, distill=False, run_bench=False)
    manifest = json.loads((args.out / "manifest.json").read_text())
    compiled = manifest["stages"]["compile"]
    artifact = Artifact(path=args.out / compiled["artifact"], backend=target.backend, quant=target.quant)
    reference = Artifact(path=Path(compiled["reference"]), backend=target.backend,
                         quant=info(target.backend).reference_level(target.quant))
    base_dir = args.out / "work" / "source-hf"
    from edgeft.stages import resolve_for, source_hash

    base_key = source_hash(resolve_for(args.model, [target.backend]))
    backend = get_backend(target.backend)
    specs = [TaskSpec(name, examples.shipped_dir() / f"{name}.jsonl", "attention") for name in examples.TASKS]

    rows, results = [], {"run": header, "model": args.model, "target": target.name, "quant": target.quant, "variants": {}}
    if args.only and args.results.is_file():  # keep the variants not rerun
        results["variants"] = json.loads(args.results.read_text()).get("variants", {})
    for name, (adapter, rank, lr, start) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        slug = name.replace(", ", "-").replace(" ", "-").lower()
        work = args.out / "work" / slug
        for spec in specs:  # the data stage's output is the same for every variant (and task_adapters.py's)
            src = args.data_from / "work" / "tasks" / spec.name / "data"
            dst = work / "tasks" / spec.name / "data"
            if src.is_dir() and not dst.exists():
                shutil.copytree(src, dst)
        preset = build_preset("demo")
        changes = {"lora_rank": rank, "lora_alpha": 2 * rank} if rank else {}
        if lr:
            changes["lr"] = lr
        if start:
            changes["prefix_init"] = start
        preset = replace(preset, distill=replace(preset.distill, **changes))
        trained = train_adapters(args.model, base_dir, base_dir, base_key, specs, preset, backend, work, args.out / slug,
                                 base=artifact, reference=reference, target=target, adapter=adapter,
                                 prefix_lr=lr or build_preset("demo").distill.lr)
        artifact, reference = trained.base, trained.reference
        bench = bench_tasks(artifact, reference, target, trained.entries, base_dir)
        results["variants"][name] = {"adapter": adapter, "lora_rank": rank, "lr": lr or preset.distill.lr,
                                     "prefix_init": start, "run": header, "tasks": []}
        for entry, row in zip(trained.entries, bench["tasks"]):
            q = row["quality"]
            params = trainable(Path(entry["peft_adapter"]))
            results["variants"][name]["tasks"].append({
                "task": row["task"], "metric": q["metric"], "value": q["value"], "base": row["base_quality"]["value"],
                "records": q["records"], "trainable_params": params, "adapter_bytes": row["adapter_bytes"],
                "ttft_ms_p90": row["ttft_ms_p90"], "ms_per_token_p90": row["ms_per_token_p90"], "proof": row["proof"],
                "method": entry["method"], "examples": q.get("examples")})
            rows.append([name, row["task"], q["metric"], f"{row['base_quality']['value']:.2f}", f"{q['value']:.2f}",
                         f"{params:,}", f"{row['adapter_bytes'] / 1e6:.2f}", f"{row['ttft_ms_p90']:.1f}",
                         f"{row['proof']['kl_adapter_vs_merged']:.1e}"])
        results["environment"] = environment_at_end(header)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1, default=str))  # after each variant
    print(table(rows, ["variant", "task", "metric", "base", "with adapter", "trainable", "file MB", "ttft p90 ms",
                       "KL runtime vs peft"]))
    print(busy_line(results["environment"]))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
