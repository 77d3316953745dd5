"""Throughput and peak memory of `edgeft data prepare` (cleaning + dedup + tokenization, no teacher).

    PYTHONPATH=. python benchmarks/data_prepare.py                       # 100,000 records, default model's tokenizer
    PYTHONPATH=. python benchmarks/data_prepare.py --records 10000 --runs 2 --model path/to/hf-folder

Every record has a target, so the teacher is not run: this measures the data path alone. The file
mixes English and Chinese records with ~5% exact duplicates, ~5% near duplicates, ~1% garbage and
~0.5% malformed lines, so every cleaning step has work to do. Each run is a fresh child process;
peak memory is that process's VmHWM (ru_maxrss), and its baseline (interpreter + libraries +
tokenizer, before any record is read) is measured in the same process and reported beside it.
A reference is timed in the same run: json.loads over the file plus one batched tokenizer call on
the same texts, i.e. the floor any implementation in Python pays. Results go to JSON first
(--out, default benchmarks/results/data_prepare.json), then a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EN_WORDS = ("model edge phone battery latency memory token river mountain cloud kitchen recipe travel ticket invoice "
            "customer order delivery weather summary question answer school teacher garden library engine network "
            "signal camera sensor printer budget market city train station music painting history science").split()
ZH_CHARS = "天气很好我们去公园散步机器学习模型在手机上运行请问最近的地铁站在哪里今天下午开会讨论预算和计划老师学生图书馆"


def make_records(n: int, seed: int) -> list[str]:
    """JSONL lines; deterministic for a seed."""
    rng = random.Random(seed)
    lines: list[str] = []
    originals: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.05 and originals:
            lines.append(json.dumps(rng.choice(originals), ensure_ascii=False))  # exact duplicate
            continue
        if roll < 0.10 and originals:
            rec = dict(rng.choice(originals))
            rec["input"] = rec["input"] + rng.choice(["!", "?", " please", " now"])  # near duplicate
            lines.append(json.dumps(rec, ensure_ascii=False))
            continue
        if roll < 0.11:
            lines.append(json.dumps({"input": rng.choice(["!!!!!!!!", "1234 5678", "aaaaaaaaaaaaaa"]), "target": "x"}))
            continue
        if roll < 0.115:
            lines.append('{"input": "broken line')  # malformed JSON
            continue
        if rng.random() < 0.7:
            words = rng.choices(EN_WORDS, k=rng.randint(8, 40))
            inp = f"Record {i}: " + " ".join(words) + "?"
            tgt = " ".join(rng.choices(EN_WORDS, k=rng.randint(5, 60))) + "."
        else:
            inp = f"第{i}条：" + "".join(rng.choices(ZH_CHARS, k=rng.randint(10, 60))) + "？"
            tgt = "".join(rng.choices(ZH_CHARS, k=rng.randint(5, 80))) + "。"
        rec = {"input": inp, "target": tgt, "metadata": {"task_type": "qa", "domain": "synthetic"}}
        originals.append(rec)
        lines.append(json.dumps(rec, ensure_ascii=False))
    return lines


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(data: Path, model: str, out: Path, layout: str) -> dict:
    """One measured run, in its own process."""
    from edgeft import models
    from edgeft.data.prepare import DataConfig, prepare_with

    t0 = time.perf_counter()
    source = models.resolve(model)
    tok = models.load_tokenizer(source)
    t_tok = time.perf_counter() - t0
    base = _rss_mb()
    t1 = time.perf_counter()
    result = prepare_with(data, source, lambda: tok, out, DataConfig(layout=layout))
    seconds = time.perf_counter() - t1
    peak = _rss_mb()
    report = json.loads(result.report.read_text())

    # the reference: parse every line and tokenize every text in one batched call
    t2 = time.perf_counter()
    texts = []
    with open(data, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            texts.append(rec["input"])
            texts.append(rec["target"])
    tok(texts, add_special_tokens=False)
    ref = time.perf_counter() - t2
    return {"seconds": seconds, "tokenizer_load_s": t_tok, "baseline_rss_mb": base, "peak_rss_mb": peak,
            "reference_parse_tokenize_s": ref, "counts": report["counts"],
            "removed": {s["step"]: s["removed"] for s in report["steps"]},
            "output_bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3, help="measured runs, each in a fresh process (first is a warm-up when > 1)")
    ap.add_argument("--model", default="default", help="model source whose tokenizer is used")
    ap.add_argument("--layout", default="pad", choices=["pad", "pack", "none"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_prepare.json")
    ap.add_argument("--worker", nargs=3, metavar=("DATA", "OUTDIR", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        data, out_dir, result = map(Path, args.worker)
        result.write_text(json.dumps(worker(data, args.model, out_dir, args.layout)))
        return

    from edgeft.bench.machine import describe, package_versions

    with tempfile.TemporaryDirectory(prefix="edgeft-bench-data-") as tmp:
        tmp = Path(tmp)
        data = tmp / "records.jsonl"
        data.write_text("\n".join(make_records(args.records, args.seed)) + "\n", encoding="utf-8")
        runs = []
        for i in range(args.runs):
            res = tmp / f"run{i}.json"
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
            subprocess.run([sys.executable, __file__, "--model", args.model, "--layout", args.layout,
                            "--worker", str(data), str(tmp / f"out{i}"), str(res)], check=True, env=env)
            runs.append(json.loads(res.read_text()))
            print(f"run {i + 1}/{args.runs}: {runs[-1]['seconds']:.1f} s", file=sys.stderr)
        measured = runs[1:] if len(runs) > 1 else runs
        secs = [r["seconds"] for r in measured]
        rate = [args.records / s for s in secs]
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        summary = {
            "records": args.records, "layout": args.layout, "model": args.model, "runs": len(measured),
            "warmup_discarded": len(runs) > 1,
            "records_per_s": {"p50": statistics.median(rate), "min": min(rate), "max": max(rate),
                              "cv": statistics.pstdev(rate) / statistics.mean(rate) if len(rate) > 1 else 0.0},
            "seconds_p50": statistics.median(secs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in measured),
            "baseline_rss_mb": statistics.median(r["baseline_rss_mb"] for r in measured),
            "reference_parse_tokenize_s": statistics.median(r["reference_parse_tokenize_s"] for r in measured),
            "tokenizer_load_s": statistics.median(r["tokenizer_load_s"] for r in measured),
            "counts": measured[-1]["counts"], "removed": measured[-1]["removed"], "output_bytes": measured[-1]["output_bytes"],
            "load_average_at_end": os.getloadavg(),
            "machine": describe(os.cpu_count() or 1),
            "versions": package_versions(("tokenizers", "transformers", "datasketch", "pyarrow", "numpy")),
            "git": git, "all_runs": runs,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'records':<28}{args.records}")
    print(f"{'records/s p50 (min-max)':<28}{summary['records_per_s']['p50']:.0f} ({summary['records_per_s']['min']:.0f}-{summary['records_per_s']['max']:.0f})")
    print(f"{'seconds p50':<28}{summary['seconds_p50']:.1f}")
    print(f"{'reference parse+tokenize s':<28}{summary['reference_parse_tokenize_s']:.1f}")
    print(f"{'peak RSS MB (baseline)':<28}{summary['peak_rss_mb']:.0f} ({summary['baseline_rss_mb']:.0f})")
    print(f"{'load average':<28}{' '.join(f'{x:.1f}' for x in summary['load_average_at_end'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
