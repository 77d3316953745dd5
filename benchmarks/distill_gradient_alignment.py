"""Why distillation and plain fine-tuning end up tied: how alike their gradients are.

For a distill run's student, the cosine similarity between the adapters' gradient under the pure
KD term (alpha = 1) and under pure cross-entropy on the targets (alpha = 0), batch by batch, on
training records: with fresh adapters (the start of training) and, when the run has one, with
its trained adapter. A cosine near 1 means the two losses move the adapters the same way, so at
that budget they must reach the same place; the teacher's extra (soft) signal is the small
remainder. JSON to --out, then one line per state.

    python benchmarks/distill_gradient_alignment.py --run benchmarks/results/distill_quality/distilled \\
        --data DATA --cache benchmarks/results/distill_quality/teacher-cache
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def cosines(model, records, cache, batches: int, batch_size: int, pad_id: int, temperature: float) -> list[float]:
    import torch

    from edgeft.distill.kd_loss import kd_loss
    from edgeft.distill.records import IGNORE, collate

    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    out = []
    for b in range(batches):
        idx = list(range(b * batch_size, (b + 1) * batch_size))
        batch = collate([records[i] for i in idx], pad_id)
        sel = batch["targets"] != IGNORE
        rows = [cache.rows(i) for i in idx]
        t_ids, t_lp = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
        grads = []
        for alpha in (1.0, 0.0):
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[sel]
            kd_loss(logits, t_ids, t_lp, batch["targets"][sel], alpha=alpha, temperature=temperature).total.backward()
            grads.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]))
        out.append(float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)))
    return out


def main() -> None:
    from _distill_common import environment

    from edgeft import models
    from edgeft.atomic_io import write_json
    from edgeft.distill import qlora, teacher_cache
    from edgeft.distill.config import DistillConfig
    from edgeft.distill.loop import _pad_id, _source_hash
    from edgeft.distill.records import read_records
    from edgeft.merge import read_adapter_meta
    from edgeft.progress import mute_import_noise, set_quiet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="an `edgeft distill` output folder (student/, adapter/)")
    ap.add_argument("--data", type=Path, required=True, help="the prepared folder the run trained on")
    ap.add_argument("--cache", type=Path, required=True, help="the folder holding the run's teacher top-k cache")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_gradient_alignment.json"))
    args = ap.parse_args()
    set_quiet(True)
    mute_import_noise()

    meta = read_adapter_meta(args.run / "adapter")
    cfg = DistillConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    src = models.resolve(meta["teacher"])
    tok = models.load_tokenizer(src)
    vocab = int(json.loads((args.run / "student" / "config.json").read_text())["vocab_size"])
    records = read_records(args.data / "train.jsonl", vocab_size=vocab, max_length=cfg.max_length)
    need = args.batches * cfg.batch_size
    if len(records) < need:
        ap.error(f"{args.data / 'train.jsonl'} has {len(records)} records; --batches {args.batches} needs {need}")
    cache, _ = teacher_cache.get_or_build(args.cache, _source_hash(src), lambda: models.load_model(src), records,
                                          cfg.top_k, _pad_id(tok), cfg.eval_batch_size)
    # fp32 base either way: the gradient's direction, not the 4-bit rounding, is the question
    states = {"fresh adapters": qlora.add_lora(qlora.load_base(args.run / "student", quantize=False), cfg),
              "trained adapter": qlora.load_adapter(qlora.load_base(args.run / "student", quantize=False), args.run / "adapter",
                                                    trainable=True)}
    result = {"env": environment(), "run": str(args.run), "temperature": cfg.temperature, "batch_size": cfg.batch_size,
              "cosine_kd_vs_ce": {}}
    for name, model in states.items():
        cs = cosines(model, records, cache, args.batches, cfg.batch_size, _pad_id(tok), cfg.temperature)
        result["cosine_kd_vs_ce"][name] = {"per_batch": cs, "mean": statistics.fmean(cs), "min": min(cs)}
        print(f"{name}: cos(grad KD, grad CE) mean {statistics.fmean(cs):.3f}, min {min(cs):.3f} over {len(cs)} batches")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
