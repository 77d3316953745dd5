"""Training speed and memory of distillation on the default model.

Variants, each in its own child process so peak RSS is its own: NF4 base through bitsandbytes +
teacher cache (the default), the same NF4 base through torchao + cache, fp32 LoRA base + cache,
bitsandbytes NF4 running the teacher every step (no cache). Tokens/s from the per-step log with
the first `--warmup` steps discarded: p50, p90 and spread, and each variant's p50 as a ratio of
fp32's. The teacher cache is built by the first variant and reused by the others (its build time
is reported apart).

    python benchmarks/distill_speed.py --data out/data --steps 12
    python benchmarks/distill_speed.py --data out/data --steps 8 --variants fp32+cache,nf4-torchao+cache
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = {
    "nf4+cache": {"quantize_base": True, "nf4_engine": "bitsandbytes", "use_teacher_cache": True},
    "nf4-torchao+cache": {"quantize_base": True, "nf4_engine": "torchao", "use_teacher_cache": True},
    "fp32+cache": {"quantize_base": False, "use_teacher_cache": True},
    "nf4+live-teacher": {"quantize_base": True, "nf4_engine": "bitsandbytes", "use_teacher_cache": False},
}
REFERENCE = "fp32+cache"  # ratios are against plain LoRA on an fp32 base


class _TrainRss:
    """Peak RSS while the training loop runs (sampled every 0.2 s). The process peak can come from
    the teacher phase, which is the same for every variant; this one is the student's own."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self.active, self.stop = psutil.Process(), 0, False, threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.stop.wait(0.2):
            if self.active:
                self.peak = max(self.peak, self.proc.memory_info().rss)

    def wrap(self, train):
        def timed(*a, **kw):
            self.active = True
            try:
                return train(*a, **kw)
            finally:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                self.active = False
        return timed


def child(args) -> None:
    """One variant: train, then print tokens/s per step and this process's peak RSS as JSON."""
    from edgeft.distill import DistillConfig, loop, open_data, run

    cfg = DistillConfig(**json.loads(args.config))
    data = open_data(Path(args.data), "default", args.out)
    rss = _TrainRss()
    loop.train = rss.wrap(loop.train)  # run() looks `train` up in its module at call time
    run("default", data, args.out, cfg, cache_dir=args.cache_dir)
    rss.stop.set()
    with open(args.out / "train_log.csv") as fh:
        log = list(csv.DictReader(fh))
    report = json.loads((args.out / "distill.json").read_text())
    print(json.dumps({"tok_per_s": [float(r["tok_per_s"]) for r in log], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "train_peak_rss_mb": rss.peak / 2**20, "teacher_cache_s": report["timings"].get("teacher_cache_s"),
                      "train_s": report["timings"]["train_s"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="prepared folder [default: the default data via the data stage]")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_speed"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the variant list this many times, interleaved, so load from other work falls on all alike")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, run in this order [default: all: {','.join(VARIANTS)}]")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from _distill_common import data_for, environment

    from edgeft.atomic_io import write_json
    from edgeft.bench.report import table

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        sys.exit(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    env = environment()
    data = data_for(args.data, args.out)
    data_dir = Path(data.train).parent
    cache_dir = args.out / "teacher-cache"
    common = {"steps": args.steps, "save_every": 0, "max_eval_records": 4, "student_layers": 15}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for rnd in range(args.rounds):
        for name in names:
            out = args.out / name / f"round{rnd + 1}" if args.rounds > 1 else args.out / name
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--child", "--data", str(data_dir), "--out", str(out),
                                   "--config", json.dumps({**common, **VARIANTS[name]}), "--cache-dir", str(cache_dir)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[name].append({**r, "wall_s": time.perf_counter() - t, "load_1min_after": os.getloadavg()[0]})
            print(f"round {rnd + 1} {name}: tok/s {[round(x) for x in r['tok_per_s']]}, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    results = {}
    for name, rs in runs.items():
        tps = sorted(x for r in rs for x in (r["tok_per_s"][args.warmup:] or r["tok_per_s"]))
        results[name] = {"tok_per_s_p50": statistics.median(tps), "tok_per_s_p90": tps[int(0.9 * (len(tps) - 1))],
                         "tok_per_s_min": tps[0], "tok_per_s_max": tps[-1], "timed_steps": len(tps),
                         "tok_per_s_p50_per_round": [statistics.median(r["tok_per_s"][args.warmup:] or r["tok_per_s"]) for r in rs],
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "train_peak_rss_mb": max(r["train_peak_rss_mb"] for r in rs),
                         "train_s": sum(r["train_s"] for r in rs), "teacher_cache_s": rs[0]["teacher_cache_s"],
                         "wall_s": sum(r["wall_s"] for r in rs), "steps": args.steps, "rounds": args.rounds,
                         "warmup_steps_discarded": args.warmup, "load_1min_after_each_round": [r["load_1min_after"] for r in rs]}
    ref = results.get(REFERENCE)
    for v in results.values():
        v["tok_per_s_vs_fp32"] = v["tok_per_s_p50"] / ref["tok_per_s_p50"] if ref else None
        v["train_peak_rss_vs_fp32"] = v["train_peak_rss_mb"] / ref["train_peak_rss_mb"] if ref else None
    write_json(args.out.parent / "distill_speed.json", {"env": env, "results": results})
    print(json.dumps(results, indent=2))
    ratio = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
    loads = lambda xs: f"{min(xs):.1f}-{max(xs):.1f}"  # noqa: E731
    print(table([[k, f"{v['tok_per_s_p50']:.0f}", f"{v['tok_per_s_p90']:.0f}", f"{v['tok_per_s_min']:.0f}-{v['tok_per_s_max']:.0f}",
                  ratio(v["tok_per_s_vs_fp32"]), f"{v['train_peak_rss_mb']:.0f}", ratio(v["train_peak_rss_vs_fp32"]),
                  f"{v['peak_rss_mb']:.0f}", loads(v["load_1min_after_each_round"])] for k, v in results.items()],
                ["variant", "tok/s p50", "tok/s p90", "spread", "tok/s vs fp32", "train RSS MB", "vs fp32", "process peak MB",
                 "load after"]))
    print(f"load average at start {env['load_average_at_start'][0]:.1f} on {env['machine']['cores']} cores")


if __name__ == "__main__":
    main()
