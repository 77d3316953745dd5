"""How flaky is the regression gate? Bench an artifact once as the baseline, then gate N more
runs of the same, unchanged artifact against it and count the failures (all false alarms).

    PYTHONPATH=. .venv/bin/python benchmarks/gate_false_alarms.py ARTIFACT.gguf [--gates 20] [--tolerance 10] [--runs 5]

Also estimates, from the measured run-to-run spread, how many timed runs keep the false-alarm
rate of one gated timing metric under 1%: the median of n runs has a standard error of about
1.25 * cv / sqrt(n); two such medians differ by sqrt(2) times that, so
n >= (2.33 * sqrt(2) * 1.25 * cv / tolerance)^2. Quality is skipped: it is deterministic.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402

Z_1PCT = 2.326  # one-sided 1% false-alarm rate
MEDIAN_EFFICIENCY = math.sqrt(math.pi / 2)  # standard error of a median vs a mean, normal noise


def runs_needed(cv: float, tolerance_pct: float) -> int:
    return max(1, math.ceil((Z_1PCT * math.sqrt(2) * MEDIAN_EFFICIENCY * cv / (tolerance_pct / 100)) ** 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--target", default="gguf")
    ap.add_argument("--gates", type=int, default=20)
    ap.add_argument("--tolerance", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "gate_false_alarms.json")
    args = ap.parse_args()

    from edgeft.backends.base import Artifact
    from edgeft.bench.baseline import gate, passed
    from edgeft.bench.run import bench
    from edgeft.config import load_target

    target = load_target(args.target).with_overrides(threads=args.threads)
    if args.runs:
        target = replace(target, bench=replace(target.bench, runs=args.runs))
    artifact = Artifact(args.artifact, "gguf", args.artifact.stem.removeprefix("model-"))
    before = context()
    base = bench(artifact, target, quality=False)
    failures, per_metric, cvs, medians = 0, {}, {}, {}
    fidelity = [base["runtime_counters"]["harness_vs_runtime_pct"]]  # decode tok/s: ours vs llama.cpp's counters
    for i in range(args.gates):
        new = bench(artifact, target, quality=False)
        fidelity.append(new["runtime_counters"]["harness_vs_runtime_pct"])
        lines = gate(base, new, target.regression, tolerance_pct=args.tolerance)
        bad = [line.metric for line in lines if line.status == "FAIL"]
        failures += not passed(lines)
        for m in bad:
            per_metric[m] = per_metric.get(m, 0) + 1
        for key in ("ttft_ms", "ms_per_token", "decode_tok_s", "prefill_tok_s"):
            cvs.setdefault(key, []).append(new["metrics"][f"{key}_cv"])
            medians.setdefault(key, []).append(new["metrics"][f"{key}_p50"])
        worst = max(lines, key=lambda line: line.worse_pct)
        print(f"gate {i + 1}/{args.gates}: {'FAIL ' + ','.join(bad) if bad else 'pass'}  (worst {worst.metric} {worst.worse_pct:+.1f}% worse)")
    spread = {k: {"median_run_cv": statistics.median(v),
                  "cv_of_medians": statistics.stdev(medians[k]) / statistics.fmean(medians[k]),
                  "runs_needed_for_tolerance": runs_needed(statistics.median(v), args.tolerance)} for k, v in cvs.items()}
    print(f"{failures} of {args.gates} gates failed at {args.tolerance:g}% tolerance with {target.bench.runs} runs each")
    print(f"decode tok/s, harness vs llama.cpp counters: median {statistics.median(fidelity):+.2f}%, "
          f"worst {max(fidelity, key=abs):+.2f}% over {len(fidelity)} benches")
    for k, s in spread.items():
        print(f"  {k}: per-run cv {s['median_run_cv']:.1%}, cv of medians across gates {s['cv_of_medians']:.1%}, "
              f"runs needed for <1% false alarms at {args.tolerance:g}%: {s['runs_needed_for_tolerance']}")
    write(args.result, {"context_before": before, "context_after": context(), "artifact": str(args.artifact),
                        "tolerance_pct": args.tolerance, "runs_per_bench": target.bench.runs, "warmup": target.bench.warmup,
                        "threads": target.resolved_threads(), "gates": args.gates, "false_alarms": failures,
                        "false_alarms_by_metric": per_metric, "spread": spread,
                        "decode_fidelity_pct": {"per_bench": fidelity, "median": statistics.median(fidelity),
                                                "worst": max(fidelity, key=abs)}})


if __name__ == "__main__":
    main()
