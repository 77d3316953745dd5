"""Training speed and memory of distillation on the default model.

Variants, each in its own child process so peak RSS is its own: NF4 base + teacher cache (the
default), fp32 LoRA base + cache, NF4 base running the teacher every step (no cache). Tokens/s
from the per-step log with the first `--warmup` steps discarded: p50, p90 and spread.
The teacher cache is built once before the timed runs (its build time is reported apart).

    python benchmarks/distill_speed.py --data out/data --steps 12
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = {
    "nf4+cache": {"quantize_base": True, "use_teacher_cache": True},
    "fp32+cache": {"quantize_base": False, "use_teacher_cache": True},
    "nf4+live-teacher": {"quantize_base": True, "use_teacher_cache": False},
}


def child(args) -> None:
    """One variant: train, then print tokens/s per step and this process's peak RSS as JSON."""
    from edgeft.distill import DistillConfig, open_data, run

    cfg = DistillConfig(**json.loads(args.config))
    data = open_data(Path(args.data), "default", args.out)
    run("default", data, args.out, cfg, cache_dir=args.cache_dir)
    with open(args.out / "train_log.csv") as fh:
        log = list(csv.DictReader(fh))
    report = json.loads((args.out / "distill.json").read_text())
    print(json.dumps({"tok_per_s": [float(r["tok_per_s"]) for r in log], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "teacher_cache_s": report["timings"].get("teacher_cache_s"), "train_s": report["timings"]["train_s"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="prepared folder [default: the default data via the data stage]")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_speed"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from _distill_common import data_for, environment

    from edgeft.atomic_io import write_json
    from edgeft.bench.report import table

    env = environment()
    data = data_for(args.data, args.out)
    data_dir = Path(data.train).parent
    cache_dir = args.out / "teacher-cache"
    common = {"steps": args.steps, "save_every": 0, "max_eval_records": 4, "student_layers": 15}
    results = {}
    for i, (name, extra) in enumerate(VARIANTS.items()):
        cfg = {**common, **extra}
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", "--data", str(data_dir), "--out", str(args.out / f"v{i}"),
                               "--config", json.dumps(cfg), "--cache-dir", str(cache_dir)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        tps = sorted(r["tok_per_s"][args.warmup:]) or sorted(r["tok_per_s"])
        results[name] = {"tok_per_s_p50": statistics.median(tps), "tok_per_s_p90": tps[int(0.9 * (len(tps) - 1))],
                         "tok_per_s_min": tps[0], "tok_per_s_max": tps[-1], "peak_rss_mb": r["peak_rss_mb"],
                         "train_s": r["train_s"], "teacher_cache_s": r["teacher_cache_s"], "wall_s": time.perf_counter() - t,
                         "steps": args.steps, "warmup_steps_discarded": args.warmup}
    write_json(args.out.parent / "distill_speed.json", {"env": env, "results": results})
    print(json.dumps(results, indent=2))
    print(table([[k, f"{v['tok_per_s_p50']:.0f}", f"{v['tok_per_s_p90']:.0f}", f"{v['tok_per_s_min']:.0f}-{v['tok_per_s_max']:.0f}",
                  f"{v['peak_rss_mb']:.0f}"] for k, v in results.items()],
                ["variant", "tok/s p50", "tok/s p90", "spread", "peak RSS MB"]))
    print(f"load average at start {env['load_average_at_start'][0]:.1f} on {env['machine']['cores']} cores")


if __name__ == "__main__":
    main()
