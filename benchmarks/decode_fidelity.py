"""Harness fidelity: our decode tokens/s (wall clock around each generated token) against
llama.cpp's own performance counters on the same runs (llama_perf_context).

    PYTHONPATH=. .venv/bin/python benchmarks/decode_fidelity.py ARTIFACT.gguf [--repeats 5] [--threads N]

Each repeat is one `bench` (its own child process); both rates aggregate every decode step of
every timed run. Target: agreement within 3%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--target", default="gguf")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "decode_fidelity.json")
    args = ap.parse_args()

    from edgeft.backends.base import Artifact
    from edgeft.bench.run import bench
    from edgeft.config import load_target

    target = load_target(args.target).with_overrides(threads=args.threads)
    before = context()
    rows = []
    for i in range(args.repeats):
        rc = bench(Artifact(args.artifact, "gguf", args.artifact.stem.removeprefix("model-")), target, quality=False)["runtime_counters"]
        rows.append({"harness_decode_tok_s": rc["harness_decode_tok_s"], "llama_cpp_decode_tok_s": rc["decode_tok_s"],
                     "diff_pct": rc["harness_vs_runtime_pct"], "steps": rc["n_eval"]})
        print(f"repeat {i + 1}: harness {rc['harness_decode_tok_s']:.1f} tok/s, llama.cpp {rc['decode_tok_s']:.1f} tok/s, "
              f"diff {rc['harness_vs_runtime_pct']:+.2f}%")
    diffs = [r["diff_pct"] for r in rows]
    summary = {"median_diff_pct": statistics.median(diffs), "worst_diff_pct": max(diffs, key=abs),
               "within_3pct": all(abs(d) <= 3 for d in diffs)}
    print(f"median difference {summary['median_diff_pct']:+.2f}%, worst {summary['worst_diff_pct']:+.2f}%, "
          f"all within 3%: {summary['within_3pct']}")
    write(args.result, {"context_before": before, "context_after": context(), "artifact": str(args.artifact),
                        "threads": target.resolved_threads(), "bench": vars(target.bench), "repeats": rows, "summary": summary})


if __name__ == "__main__":
    main()
