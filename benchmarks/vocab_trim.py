"""Vocabulary trimming, before and after (issue 16): package size, TTFT, decode speed, and quality
against the untrimmed model, on the default model (SmolLM2-135M) and on Gemma 3 270M.

For each model, `edgeft build --no-distill` at the GGUF target's level (q4_k_m): the model as it is;
`--trim-vocab TASK`, where TASK is four of every five of the shipped default prompts (the teacher
writes their answers, as in a build); and `--trim-vocab N` for two counts. Every artifact is scored
on three texts, renumbered into its own ids when trimmed (as `build --trim-vocab --eval-data` does):
- task text: TASK's prepared records (prompts and the teacher's answers), every token of it kept;
- held-out: the fifth prompts, which the trim never saw, with the teacher's answers;
- eval.txt: the shipped prose, also never seen.

Two quality figures, because they answer different questions:
- KL against the source, the bench's own: the untrimmed model's distribution renormalised over the
  kept tokens, on the same token ids as the artifact. Trimming alone changes nothing there; what
  shows is quantization.
- NLL of the text, `nll_total`: perplexity is per token, and a trimmed vocabulary splits unseen words
  into more tokens, so the perplexities are not comparable. The total negative log-likelihood of the
  same text is (up to the first token of each 256-token window), and its change against the full
  build is what trimming costs, quantization included on both sides.

    PYTHONPATH=. .venv/bin/python benchmarks/vocab_trim.py [--models default,gemma3-270m] [--out out/bench-trim]

JSON in benchmarks/results/vocab_trim.json. Timings are only as quiet as the machine: the printout ends
with the load.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_info import DEFAULT_RESULTS, busy_line, environment_at_end, run_header, table  # noqa: E402

HOLD_OUT_EVERY = 5


def split_prompts(folder: Path) -> tuple[Path, Path]:
    """The shipped prompts, one in five held out (by position: both languages land on both sides)."""
    from edgeft.data.prepare import DEFAULT_DATA

    lines = [line for line in DEFAULT_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    task, held = folder / "task.jsonl", folder / "held-out.jsonl"
    task.write_text("".join(line + "\n" for i, line in enumerate(lines) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1))
    held.write_text("".join(line + "\n" for i, line in enumerate(lines) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1))
    return task, held


def held_out_ids(held: Path, model: str, folder: Path) -> Path:
    """The held-out prompts with the teacher's answers, both splits in one JSONL, in the model's ids."""
    from edgeft.data.prepare import prepare
    from edgeft.presets import build_preset

    prepared = folder / "held-out-prepared"
    if not (prepared / "eval.jsonl").is_file():
        prepare(held, model, prepared, replace(build_preset("demo").data, eval_fraction=0.0))
    full = folder / "held-out.jsonl"
    full.write_text("".join((prepared / name).read_text(encoding="utf-8") for name in ("train.jsonl", "eval.jsonl")))
    return full


COUNTS = {"default": (8192, 16384), "gemma3-270m": (65536,)}
EVAL_SETS = ("task text", "held-out", "eval.txt")


def variant_build(model: str, out: Path, trim: "Path | int | None"):
    """One `edgeft build --no-distill [--trim-vocab trim]` without its bench: (artifact, source folder, trim stage)."""
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import identify
    from edgeft.config import load_target
    from edgeft.pipeline import build

    result = build(model, load_target("gguf"), out, run_bench=False, distill=False, trim_vocab=trim)
    stages = json.loads(result.manifest.read_text())["stages"]
    backend, level = identify(result.artifact)
    source = out / "work" / ("source-hf" if trim is None else "trimmed")
    return Artifact(path=result.artifact, backend=backend, quant=level), source, stages.get("trim")


def measure(name: str, artifact, source: Path, trim_stage: dict | None, evals: dict[str, Path | None], out: Path) -> dict:
    """Bench one artifact on each evaluation set, the set renumbered into its ids when trimmed."""
    from edgeft import vocab_trim
    from edgeft.bench.run import bench
    from edgeft.config import load_target

    target = load_target("gguf")
    target = replace(target, bench=replace(target.bench, eval_tokens=16384))
    row: dict = {"variant": name, "trim": trim_stage, "eval": {}, "latency": []}
    for set_name, path in evals.items():
        if path is not None and trim_stage is not None:
            path = vocab_trim.renumber_eval_file(path, out / f"{set_name.replace(' ', '-')}-trimmed.jsonl", source)
        b = bench(artifact, target, eval_data=path, source=source)
        m = b["metrics"]
        row["latency"].append({k: m[k] for k in ("ttft_ms_p50", "ttft_ms_p90", "ms_per_token_p50", "decode_tok_s_p50",
                                                  "peak_rss_mb")})
        row["package_mb"] = m["package_mb"]
        row["eval"][set_name] = {"ppl": m["ppl"], "tokens_scored": b["eval"]["tokens_scored"],
                                 "nll_total": math.log(m["ppl"]) * b["eval"]["tokens_scored"],
                                 "source_ppl": m.get("source_ppl"), "kl_vs_source_mean": m.get("kl_vs_source_mean"),
                                 "kl_vs_source_p99": m.get("kl_vs_source_p99"), "top1_vs_source_pct": m.get("top1_vs_source_pct"),
                                 "answers": b.get("answers")}
    return row


def model_rows(model: str, root: Path) -> list[dict]:
    """The full build, the DATA trim and the count trims of one model, on the same three texts."""
    from edgeft.errors import EdgeftError

    folder = root / model
    task, held = split_prompts(folder / "data")
    builds = {"full": variant_build(model, folder / "full", None), "trim DATA": variant_build(model, folder / "trim-data", task)}
    for n in COUNTS.get(model, (8192, 16384)):
        try:
            builds[f"trim {n}"] = variant_build(model, folder / f"trim-{n}", n)
        except EdgeftError as exc:  # fewer than the byte, character and special tokens
            print(f"{model}: --trim-vocab {n}: {exc.one_line()}")
    # the task text: the DATA trim's own prepared records (prompts and the teacher's answers), full ids
    prepared = folder / "trim-data" / "work" / "trim-data"
    task_ids = folder / "task-text.jsonl"
    task_ids.write_text("".join((prepared / n).read_text(encoding="utf-8") for n in ("train.jsonl", "eval.jsonl")))
    evals = {"task text": task_ids, "held-out": held_out_ids(held, model, folder), "eval.txt": None}
    rows = []
    for name, (artifact, source, trim_stage) in builds.items():
        rows.append({"model": model, **measure(name, artifact, source, trim_stage, evals, folder / name.replace(" ", "-"))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,gemma3-270m")
    ap.add_argument("--out", type=Path, default=Path("out") / "bench-trim")
    ap.add_argument("--result", type=Path, default=DEFAULT_RESULTS / "vocab_trim.json")
    args = ap.parse_args()

    header = run_header()
    rows = [r for model in args.models.split(",") for r in model_rows(model, args.out)]
    printed = []
    for r in rows:
        full = next(f for f in rows if f["model"] == r["model"] and f["variant"] == "full")
        lat = r["latency"][-1]  # the eval.txt bench's timings
        cells = [r["model"], r["variant"], r["trim"]["kept_vocab"] if r["trim"] else "-", round(r["package_mb"], 1),
                 round(lat["ttft_ms_p90"], 1), round(lat["decode_tok_s_p50"], 1)]
        for name in EVAL_SETS:
            ev, base = r["eval"][name], full["eval"][name]
            cells += [f"{(ev['nll_total'] / base['nll_total'] - 1) * 100:+.2f} %", round(ev["kl_vs_source_mean"], 4)]
        printed.append(cells)
    head = ["model", "build", "vocab", "package MB", "TTFT p90 ms", "decode tok/s"]
    for n in EVAL_SETS:
        head += [f"{n}: NLL vs full", f"{n}: KL vs src"]
    print(table(printed, head))
    env = environment_at_end(header)
    print(busy_line(env))
    from edgeft.atomic_io import write_json

    write_json(args.result, {"environment": env, "eval_sets": list(EVAL_SETS), "rows": rows})
    print(f"wrote {args.result}")


if __name__ == "__main__":
    main()
