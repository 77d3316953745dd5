"""The default model (SmolLM2-135M-Instruct) at f16, q8_0, q5_k_m, q4_k_m and q4_0, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/compare_default.py [--out out/bench-compare] [--threads N]

Runs `edgeft compare` (one conversion, one f16 reference, the same evaluation tokens for every
level), prints the table and writes benchmarks/results/compare_default.json with the machine
and load beside it. Re-run on a quiet machine for publishable numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402

LEVELS = "f16,q8_0,q5_k_m,q4_k_m,q4_0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench-compare")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None, help="timed runs per level (default: the profile's)")
    ap.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "compare_default.json")
    args = ap.parse_args()

    from edgeft.bench.compare import compare, parse_levels, table_rows
    from edgeft.bench.report import table
    from edgeft.config import load_target

    target = load_target("gguf").with_overrides(threads=args.threads)
    if args.runs:
        from dataclasses import replace

        target = replace(target, bench=replace(target.bench, runs=args.runs))
    before = context()
    result = compare("default", [target], parse_levels(LEVELS, [target]), args.out)
    header, rows = table_rows(result.data)
    print(table(rows, header))
    print(result.data["verdict"])
    write(args.result, {"context_before": before, "context_after": context(), "compare": result.data,
                        "png": str(result.png_path)})


if __name__ == "__main__":
    main()
