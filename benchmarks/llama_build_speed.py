"""Decode speed of two llama-cpp-python builds side by side: our portable build against a native one.

    .venv/bin/python benchmarks/llama_build_speed.py F16.gguf --build portable=venv --build native=/tmp/native-site

A build is `venv` (what the venv holds) or a folder with another llama_cpp package in it (made with
`pip install --no-deps --target DIR WHEEL`), put first on the bench worker's PYTHONPATH. Each round
benches every (build, quant, threads) once, in a random order within the round, so load that comes
and goes hits both builds alike; each bench is its own child process (`edgeft.bench.run.bench`).
The figure is the median over rounds of the paired ratio of decode tok/s (llama.cpp's own counters;
ours beside them), with its interquartile range.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("f16", type=Path, help="an f16 GGUF of the model (e.g. out/f16/model-f16.gguf)")
    ap.add_argument("--build", action="append", required=True, help="NAME=venv or NAME=SITE_DIR; the first is the one judged")
    ap.add_argument("--quant", default="q4_0,q4_k_m")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "llama_build_speed.json")
    args = ap.parse_args()

    from edgeft.backends.base import Artifact
    from edgeft.backends.gguf.backend import quantize
    from edgeft.bench.run import bench
    from edgeft.config import load_target

    builds = dict(b.split("=", 1) for b in args.build)
    quants = args.quant.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    rng = random.Random(args.seed)
    before = context()
    samples: dict[tuple[str, str, int], list[dict]] = {}
    system_info: dict[str, str] = {}
    base_path = os.environ.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="edgeft-build-speed-") as tmp:
        files = {q: quantize(args.f16, Path(tmp) / f"model-{q}.gguf", q) for q in quants}
        groups = [(q, t) for q in quants for t in threads]
        for r in range(args.rounds):
            rng.shuffle(groups)
            # Both builds of one (quant, threads) run back to back, in a random order: a pair shares its moment.
            cells = [(b, q, t) for q, t in groups for b in rng.sample(list(builds), len(builds))]
            for build, quant, n in cells:
                site = builds[build]
                os.environ["PYTHONPATH"] = base_path if site == "venv" else os.pathsep.join(p for p in (site, base_path) if p)
                target = load_target("gguf").with_overrides(quant=quant, threads=n)
                result = bench(Artifact(files[quant], "gguf", quant), target, quality=False)
                rc = result["runtime_counters"]
                system_info[build] = result["machine"]["runtime"]["system_info"]
                samples.setdefault((build, quant, n), []).append(
                    {"llama_cpp_decode_tok_s": rc["decode_tok_s"], "harness_decode_tok_s": rc["harness_decode_tok_s"],
                     "prefill_tok_s_p50": result["metrics"]["prefill_tok_s_p50"]})
                print(f"round {r + 1} {build:>10} {quant:>7} {n} thr: decode {rc['decode_tok_s']:.1f} tok/s "
                      f"(ours {rc['harness_decode_tok_s']:.1f}), prefill {result['metrics']['prefill_tok_s_p50']:.0f}", flush=True)
    os.environ["PYTHONPATH"] = base_path
    judged = next(iter(builds))
    rows = []
    for quant in quants:
        for n in threads:
            row = {"quant": quant, "threads": n}
            for build in builds:
                runs = samples[(build, quant, n)]
                for key in ("llama_cpp_decode_tok_s", "harness_decode_tok_s", "prefill_tok_s_p50"):
                    row[f"{build}_{key}"] = statistics.median(s[key] for s in runs)
            for build in builds:
                if build == judged:
                    continue
                # Paired per round (the two ran back to back), then the median: drift between rounds cancels.
                pairs = list(zip(samples[(judged, quant, n)], samples[(build, quant, n)]))
                for key, label in (("llama_cpp_decode_tok_s", "decode"), ("prefill_tok_s_p50", "prefill")):
                    ratios = sorted(a[key] / b[key] for a, b in pairs)
                    row[f"{judged}_vs_{build}_{label}"] = statistics.median(ratios)
                    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
                    row[f"{judged}_vs_{build}_{label}_iqr"] = [q[0], q[2]]
            rows.append(row)
    print()
    for row in rows:
        shown = "  ".join(f"{b} {row[f'{b}_llama_cpp_decode_tok_s']:.1f} (ours {row[f'{b}_harness_decode_tok_s']:.1f})" for b in builds)
        ratios = "  ".join(f"{k} {v:.3f} (IQR {row[k + '_iqr'][0]:.3f}-{row[k + '_iqr'][1]:.3f})"
                           for k, v in row.items() if k.endswith(("_decode", "_prefill")))
        print(f"{row['quant']:>7} {row['threads']} thr  decode tok/s: {shown}  {ratios}")
    write(args.result, {"context_before": before, "context_after": context(), "f16": str(args.f16), "builds": builds,
                        "system_info": system_info, "rounds": args.rounds, "bench": vars(load_target("gguf").bench),
                        "samples": {f"{b}/{q}/{t}": v for (b, q, t), v in samples.items()}, "summary": rows})


if __name__ == "__main__":
    main()
