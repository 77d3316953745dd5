"""Teacher generation speed for the data stage: llama.cpp (what `data prepare` uses) against
transformers' generate on the same prompts, greedy, same token budget.

    PYTHONPATH=. python benchmarks/teacher_synthesis.py --prompts 8 --max-new-tokens 48

Prompts are the first N shipped default prompts rendered with the teacher's chat template.
Each engine's first prompt is a warm-up and is discarded. Reports generated tokens per second
(p50 over prompts and the total), per engine and thread count, as JSON first, then a table."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _summary(name: str, threads: int, per_prompt: list[tuple[int, float]]) -> dict:
    measured = per_prompt[1:] if len(per_prompt) > 1 else per_prompt
    rates = [n / s for n, s in measured if s > 0]
    tokens = sum(n for n, _ in measured)
    secs = sum(s for _, s in measured)
    return {"engine": name, "threads": threads, "prompts": len(measured), "tokens": tokens, "seconds": round(secs, 2),
            "tokens_per_s_total": round(tokens / secs, 2) if secs else None,
            "tokens_per_s_p50": round(statistics.median(rates), 2) if rates else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", default="1,0", help="llama.cpp thread counts to try (0 = all cores)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_synthesis.json")
    args = ap.parse_args()

    import torch
    from llama_cpp import Llama

    from edgeft import models
    from edgeft.bench.machine import describe, package_versions
    from edgeft.data.prepare import DEFAULT_DATA
    from edgeft.data.synthesize import _stop_ids
    from edgeft.data.tokenize import Templater

    source = models.resolve(args.model)
    tok = models.load_tokenizer(source)
    templater = Templater(tok, "{input}")
    inputs = [json.loads(line)["input"] for line in DEFAULT_DATA.read_text(encoding="utf-8").splitlines()[: args.prompts + 1]]
    prompt_ids = templater.encode_prompts([(i, None) for i in inputs])
    if source.kind != "gguf":
        raise SystemExit("this benchmark expects a GGUF teacher (the default model is one)")

    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        n = threads or os.cpu_count() or 1
        llm = Llama(model_path=str(source.path), n_ctx=1024, n_batch=512, n_threads=n, n_threads_batch=n, verbose=False, seed=0)
        stop = _stop_ids(tok, llm)
        per = []
        for ids in prompt_ids:
            llm.reset()
            t = time.perf_counter()
            new = []
            for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=False):
                if int(token) in stop or len(new) >= args.max_new_tokens:
                    break
                new.append(int(token))
            per.append((len(new), time.perf_counter() - t))
        llm.close()
        results.append(_summary("llama.cpp (GGUF as shipped)", n, per))
        print(json.dumps(results[-1]), file=sys.stderr)

    if not args.skip_transformers:
        model = models.load_model(source)
        torch.set_num_threads(os.cpu_count() or 1)
        per = []
        with torch.inference_mode():
            for ids in prompt_ids:
                t = time.perf_counter()
                out = model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, do_sample=False,
                                     eos_token_id=sorted(_stop_ids(tok, llm)), pad_token_id=tok.pad_token_id or 0)
                per.append((out.shape[1] - len(ids), time.perf_counter() - t))
        results.append(_summary("transformers generate (fp32)", torch.get_num_threads(), per))
        print(json.dumps(results[-1]), file=sys.stderr)

    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {"model": args.model, "max_new_tokens": args.max_new_tokens, "results": results, "load_average": os.getloadavg(),
               "machine": describe(os.cpu_count() or 1), "versions": package_versions(("llama-cpp-python", "torch", "transformers")),
               "git": git}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'engine':<32}{'threads':>8}{'tokens':>8}{'tok/s total':>12}{'tok/s p50':>11}")
    for r in results:
        print(f"{r['engine']:<32}{r['threads']:>8}{r['tokens']:>8}{r['tokens_per_s_total'] or 0:>12.1f}{r['tokens_per_s_p50'] or 0:>11.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
