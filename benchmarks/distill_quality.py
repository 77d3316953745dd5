"""Held-out quality of distillation on the default model and data.

(a) the 30-layer teacher, (b) the 15-layer student before training, (c) after distillation
(KD + CE) with the step budget `edgeft build` uses (its demo preset, or --preset full), (d) after
plain fine-tuning on the same data, steps and settings without the teacher (alpha = 0).
Perplexity on the eval split's target tokens and top-1 agreement with the teacher; then, on text
none of them trained on (edgeft/assets/eval.txt, the bench's shipped text), the merged models'
perplexity, KL(teacher || model) per token and top-1 agreement with the teacher. JSON first
(benchmarks/results/distill_quality.json), then a table. The default data is the shipped prompt
set answered by the teacher in full (279 records, ~28 held out; the build's demo caps it at 96).

    python benchmarks/distill_quality.py                      # default data via the data stage
    python benchmarks/distill_quality.py --data out/data      # a prepared folder
    python benchmarks/distill_quality.py --steps 10 --max-eval 16   # a short version
    python benchmarks/distill_quality.py --steps 150 --grad-accum 2 --warmup-steps 15   # `edgeft distill`'s budget
    python benchmarks/distill_quality.py --data benchmarks/results/distill_quality/data --seed 1 --out ...  # a replicate
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


class _TorchRunner:
    """An in-memory transformers model behind the Runner interface (`logits`), so the bench's own
    scorer (edgeft.bench.perplexity.score) measures it exactly as it measures GGUF and ONNX files."""

    def __init__(self, model) -> None:
        self.model = model.eval()

    def logits(self, token_ids: list[int]):
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.tensor([token_ids])).logits[0].float().numpy()


def general_text_scores(runs: dict[str, Path], window: int = 512) -> dict[str, dict]:
    """Teacher, student before training (its base as trained: NF4-rounded when the base was 4-bit)
    and each run's merged fp32 model on the shipped eval text, against the teacher."""
    from transformers import AutoModelForCausalLM

    from edgeft import models
    from edgeft.bench.perplexity import score
    from edgeft.bench.prompt import eval_text
    from edgeft.merge import dense_base, merge, nf4_engine, read_adapter_meta

    src = models.resolve("default")
    ids = models.load_tokenizer(src)(eval_text(), add_special_tokens=False)["input_ids"]
    teacher = _TorchRunner(models.load_model(src))
    scores = {"teacher": score(teacher, ids, window)}
    first = read_adapter_meta(next(iter(runs.values())) / "adapter")
    scores["student_before"] = score(_TorchRunner(dense_base(Path(first["student_dir"]), nf4_engine(first))), ids, window, teacher)
    for name, run_dir in runs.items():
        merged = merge(run_dir / "adapter", run_dir / "merged", dtype="float32")
        scores[name] = score(_TorchRunner(AutoModelForCausalLM.from_pretrained(merged)), ids, window, teacher)
    return scores


def main() -> None:
    from _distill_common import data_for, environment

    from edgeft.atomic_io import write_json
    from edgeft.bench.report import table
    from edgeft.data.prepare import REPORT_NAME
    from edgeft.distill import run
    from edgeft.presets import PRESETS
    from edgeft.progress import set_quiet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="prepared folder or raw data file [default: the default data]")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_quality"))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="the build preset whose distill settings are used")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps [default: the preset's]")
    ap.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step [default: the preset's]")
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--alpha", type=float, default=None, help="KD weight of the distilled run (fine-tuning is alpha 0)")
    ap.add_argument("--max-eval", type=int, default=0, help="eval records used [default: 0 = all]")
    ap.add_argument("--student-layers", type=int, default=15)
    ap.add_argument("--layer-pick", choices=["even", "ends", "block"], default=None, help="[default: the preset's]")
    ap.add_argument("--seed", type=int, default=None,
                    help="data order and LoRA initialisation of both runs [default: the preset's]; a second seed is a replicate")
    ap.add_argument("--no-quantize-base", dest="quantize_base", action="store_const", const=False, default=None,
                    help="plain LoRA on an fp32 base instead of the presets' NF4 (QLoRA)")
    args = ap.parse_args()
    set_quiet(False)

    env = environment()
    data = data_for(args.data, args.out)
    base = PRESETS[args.preset].distill.with_overrides(steps=args.steps, grad_accum=args.grad_accum,
                                                       warmup_steps=args.warmup_steps, temperature=args.temperature,
                                                       alpha=args.alpha, max_eval_records=args.max_eval,
                                                       student_layers=args.student_layers, layer_pick=args.layer_pick,
                                                       quantize_base=args.quantize_base, seed=args.seed)
    variants = {"distilled": base, "fine_tuned": dataclasses.replace(base, alpha=0.0)}
    results, walls = {}, {}
    for name, cfg in variants.items():
        t = time.perf_counter()
        run("default", data, args.out / name, cfg, cache_dir=args.out / "teacher-cache")
        walls[name] = time.perf_counter() - t
        results[name] = json.loads((args.out / name / "distill.json").read_text())
    ev = results["distilled"]["eval"]
    rows = {"teacher": ev["teacher"], "student_before": ev["student_before"], "distilled": ev["student_after"],
            "fine_tuned": results["fine_tuned"]["eval"]["student_after"]}
    report = {"env": env, "preset": args.preset, "config": base.to_dict(),
              "kept_layers": results["distilled"]["student"]["kept_layers"], "eval_tokens": ev["teacher"]["tokens"],
              "train_records": results["distilled"]["train_records"], "eval_records": results["distilled"]["eval_records"],
              "results": rows, "wall_s": walls, "train_tok_per_s": {k: v["train_tok_per_s"] for k, v in results.items()}}
    data_report = Path(data.out_dir) / REPORT_NAME
    if data_report.is_file():  # how the targets were written (greedy or sampled) changes every figure
        data_steps = json.loads(data_report.read_text())["steps"]
        report["data_synthesis"] = next((s.get("settings") for s in data_steps if s["step"] == "synthesis"), None)
    report["general_text"] = general = general_text_scores({k: args.out / k for k in variants})
    write_json(args.out.with_suffix(".json"), report)
    print(json.dumps({"eval_split": report["results"], "general_text": general}, indent=2))
    print(table([[k, f"{v['perplexity']:.3f}", "-" if v["top1_agreement"] is None else f"{v['top1_agreement']:.1%}",
                  f"{general[k]['ppl']:.2f}", "-" if k == "teacher" else f"{general[k]['kl_mean']:.3f}",
                  "-" if k == "teacher" else f"{general[k]['top1_agree_pct']:.1f}%"]
                 for k, v in rows.items()],
                ["model", "eval-split ppl", "top-1 agreement", "eval.txt ppl", "KL to teacher", "top-1 agreement"]))
    print(f"steps {base.steps}, wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items())
          + f"; load average at start {env['load_average_at_start'][0]:.1f} on {env['machine']['cores']} cores")


if __name__ == "__main__":
    main()
