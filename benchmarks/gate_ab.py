"""Does the A/B gate hold on a loaded 2-core runner? False alarms, power and cost, with a real
background load (CPU-bound processes started and stopped here) running throughout.

    .venv/bin/python benchmarks/gate_ab.py OLD.gguf SLOWER.gguf [--gates 20] [--load 2] [--tolerance 10]

- false alarms: `--gates` A/B gates of OLD against itself, and as many of OLD against a
  byte-identical copy; and, beside them, today's stored-baseline gate (one bench of OLD stored,
  then `--gates` benches of OLD gated against it) under the same load;
- power: `--gates` A/B gates of SLOWER against OLD; SLOWER's real margin is measured first,
  quietly (no load), by the same paired rounds;
- cost: the median wall time of a gate that decided, against one plain bench.
Inconclusive verdicts are counted separately. Timing only (quality is deterministic and skipped).
JSON in benchmarks/results/gate_ab.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402


def _burn(stop, parent: int) -> None:
    """Spin until told to stop, or until the script that started it is gone: a script killed
    mid-run must not leave its load behind (orphans once loaded a later run's "quiet" phase)."""
    import os

    x = 0
    while not stop.is_set() and os.getppid() == parent:
        for i in range(100000):
            x = (x * 31 + i) % 1000003


class Load:
    """`n` CPU-bound processes for the duration of a `with` block."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.procs = [ctx.Process(target=_burn, args=(self.stop, os.getpid()), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("slower", type=Path)
    ap.add_argument("--target", default="gguf")
    ap.add_argument("--gates", type=int, default=20)
    ap.add_argument("--load", type=int, default=2, help="CPU-bound background processes")
    ap.add_argument("--tolerance", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=20, help="the most rounds of an adaptive gate")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="runtime threads of each side (default: the profile's)")
    ap.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "gate_ab.json")
    args = ap.parse_args()

    from edgeft.bench.against import against, resolve_artifact
    from edgeft.bench.baseline import gate, passed
    from edgeft.bench.run import bench
    from edgeft.config import load_target

    target = load_target(args.target).with_overrides(threads=args.threads)
    target = replace(target, bench=replace(target.bench, new_tokens=args.new_tokens))
    old = resolve_artifact(args.old, target.backend)
    slower = resolve_artifact(args.slower, target.backend)
    tmp = Path(tempfile.mkdtemp(prefix="edgeft-gate-ab-"))
    copy_path = tmp / args.old.name
    shutil.copyfile(args.old, copy_path)
    copy = resolve_artifact(copy_path, target.backend)
    before = context()

    def ab_gate(new, base, rounds=args.rounds, adaptive=True):
        t = time.perf_counter()
        r = against(new, base, target, tolerance_pct=args.tolerance, rounds=rounds, adaptive=adaptive, quality=False,
                    seed=int(time.time_ns() % 100000))
        return r, time.perf_counter() - t

    print("quiet: measuring the slower candidate's real margin (30 paired rounds, no load) ...", flush=True)
    margin, _ = ab_gate(slower, old, rounds=30, adaptive=False)
    margins = {v["metric"]: v["median_ratio"] for v in margin["verdicts"]}
    print("  margin (median ratio, > 1 slower): " + ", ".join(f"{k} {v:.3f}" for k, v in margins.items()), flush=True)
    t = time.perf_counter()
    bench(old, target, quality=False)
    plain_bench_s = time.perf_counter() - t

    results: dict[str, list] = {"self": [], "identical_copy": [], "slower": [], "stored_baseline": []}
    with Load(args.load):
        load_context = context()
        for kind, new in (("self", old), ("identical_copy", copy), ("slower", slower)):
            for i in range(args.gates):
                r, seconds = ab_gate(new, old)
                results[kind].append({"verdict": r["verdict"], "rounds": len(r["rounds"]), "seconds": round(seconds, 1),
                                      "verdicts": {v["metric"]: [v["status"], round(v["median_ratio"], 4),
                                                                 round(v["ci_low"], 4), round(v["ci_high"], 4)]
                                                   for v in r["verdicts"]}})
                print(f"{kind} {i + 1}/{args.gates}: {r['verdict']} in {len(r['rounds'])} rounds, {seconds:.0f} s", flush=True)
        stored = bench(old, target, quality=False)
        for i in range(args.gates):
            t = time.perf_counter()
            new = bench(old, target, quality=False)
            lines = gate(stored, new, target.regression, tolerance_pct=args.tolerance)
            results["stored_baseline"].append({"verdict": "PASS" if passed(lines) else "FAIL", "seconds": round(time.perf_counter() - t, 1),
                                               "failed": [line.metric for line in lines if line.status == "FAIL"]})
            print(f"stored baseline {i + 1}/{args.gates}: {results['stored_baseline'][-1]['verdict']}", flush=True)
        load_after = context()

    def count(kind, verdict):
        return sum(1 for r in results[kind] if r["verdict"] == verdict)

    decided = [r["seconds"] for k in ("self", "identical_copy", "slower") for r in results[k] if r["verdict"] != "INCONCLUSIVE"]
    summary = {
        "false_alarms_self": count("self", "FAIL"), "inconclusive_self": count("self", "INCONCLUSIVE"),
        "false_alarms_copy": count("identical_copy", "FAIL"), "inconclusive_copy": count("identical_copy", "INCONCLUSIVE"),
        "caught_slower": count("slower", "FAIL"), "inconclusive_slower": count("slower", "INCONCLUSIVE"),
        "stored_baseline_false_alarms": count("stored_baseline", "FAIL"),
        "median_decided_gate_seconds": statistics.median(decided) if decided else None,
        "plain_bench_seconds": round(plain_bench_s, 1), "gates_per_kind": args.gates,
    }
    for k, v in summary.items():
        print(f"{k}: {v}")
    write(args.result, {"context_before": before, "context_under_load": load_context, "context_load_end": load_after,
                        "old": str(args.old), "slower": str(args.slower), "tolerance_pct": args.tolerance,
                        "max_rounds": args.rounds, "new_tokens": args.new_tokens, "load_processes": args.load,
                        "threads": target.resolved_threads(),
                        "quiet_margin": margins, "summary": summary, "gates": results})
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
