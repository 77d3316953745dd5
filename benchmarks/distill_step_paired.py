"""Training-step speed of the three student bases, paired: fp32, NF4 through torchao, NF4 through
bitsandbytes, each with fresh LoRA adapters, loaded side by side in one process.

Why paired: on a shared machine the load from other work swings tokens/s by 4x between
minutes, so variants run one after another (distill_speed.py) compare the load, not the bases.
Here one cycle runs one micro-batch through each base in turn (rotating who goes first), and
the figure is the median over cycles of each base's tokens/s divided by fp32's in the same
cycle. The step is forward + cross-entropy + backward + AdamW on the adapters, like the loop
minus the KD term (the same for every base). No RSS here: the three models share a process.

    python benchmarks/distill_step_paired.py --student out/distill_speed/fp32+cache/student --data out/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

BASES = {"fp32": None, "nf4-torchao": "torchao", "nf4-bitsandbytes": "bitsandbytes"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, required=True, help="a student HF folder (e.g. one distill_speed.py wrote)")
    ap.add_argument("--data", type=Path, required=True, help="a prepared folder with train.jsonl")
    ap.add_argument("--cycles", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=1, help="cycles discarded")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_step_paired.json"))
    args = ap.parse_args()

    import torch

    from _distill_common import environment

    from edgeft.atomic_io import write_json
    from edgeft.bench.report import table
    from edgeft.distill.config import DistillConfig
    from edgeft.distill.qlora import add_lora, load_base
    from edgeft.distill.records import IGNORE, collate, read_records
    from edgeft.progress import mute_import_noise

    mute_import_noise()
    env = environment()
    cfg = DistillConfig(lora_dropout=0.0)  # the demo's rank, alpha and targets; no dropout noise between bases
    vocab = int(json.loads((args.student / "config.json").read_text())["vocab_size"])
    recs = read_records(args.data / "train.jsonl", vocab_size=vocab, max_length=cfg.max_length)
    models, load_s = {}, {}
    for name, engine in BASES.items():
        torch.manual_seed(cfg.seed)  # the same adapter initialization for every base
        t = time.perf_counter()
        base = load_base(args.student, quantize=True, engine=engine) if engine else load_base(args.student, quantize=False)
        model = add_lora(base, cfg).train()
        load_s[name] = time.perf_counter() - t
        models[name] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr))
    names = list(models)
    tps: dict[str, list[float]] = {n: [] for n in names}
    for c in range(args.cycles):
        start = (cfg.batch_size * c) % len(recs)
        batch = collate(recs[start:start + cfg.batch_size], 0)
        sel = batch["targets"] != IGNORE  # [b, s]
        tokens = int(batch["attention_mask"].sum())
        for n in names[c % len(names):] + names[: c % len(names)]:
            model, opt = models[n]
            t = time.perf_counter()
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [b, s, vocab]
            torch.nn.functional.cross_entropy(logits[sel], batch["targets"][sel]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tps[n].append(tokens / (time.perf_counter() - t))
        print(f"cycle {c + 1}: " + ", ".join(f"{n} {tps[n][-1]:.0f}" for n in names) + f" tok/s, load {os.getloadavg()[0]:.1f}",
              file=sys.stderr)
    results = {}
    for n in names:
        kept = tps[n][args.warmup:]
        ratios = [a / b for a, b in zip(kept, tps["fp32"][args.warmup:])]
        results[n] = {"tok_per_s_p50": statistics.median(kept), "tok_per_s_min": min(kept), "tok_per_s_max": max(kept),
                      "paired_ratio_vs_fp32_p50": statistics.median(ratios), "paired_ratio_min": min(ratios),
                      "paired_ratio_max": max(ratios), "load_s": load_s[n], "tok_per_s": tps[n]}
    write_json(args.out, {"env": env, "cycles": args.cycles, "warmup_cycles": args.warmup, "batch_size": cfg.batch_size,
                          "load_average_after": os.getloadavg(), "results": results})
    print(table([[n, f"{r['tok_per_s_p50']:.0f}", f"{r['tok_per_s_min']:.0f}-{r['tok_per_s_max']:.0f}",
                  f"{r['paired_ratio_vs_fp32_p50']:.2f}x", f"{r['paired_ratio_min']:.2f}-{r['paired_ratio_max']:.2f}",
                  f"{r['load_s']:.1f}"] for n, r in results.items()],
                ["base", "tok/s p50", "spread", "vs fp32 (paired p50)", "ratio spread", "load+quantize s"]))
    print(f"load average {env['load_average_at_start'][0]:.1f} -> {os.getloadavg()[0]:.1f} on {env['machine']['cores']} cores; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
