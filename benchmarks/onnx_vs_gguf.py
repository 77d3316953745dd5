"""The onnx backend on the default model, side by side with GGUF, and against onnxruntime-genai's
own builder at its defaults.

    python benchmarks/onnx_vs_gguf.py [--out out/bench-onnx] [--threads 0] [--runs 5]

Builds (or reuses, with --reuse) the default model (SmolLM2-135M-Instruct) as ONNX fp32, int8
and int4 with `edgeft`, as GGUF q8_0 and q4_k_m with `edgeft`, and as int4 with
`python -m onnxruntime_genai.models.builder` at its defaults (the reference). Every artifact
is timed by edgeft's bench (a child process per artifact: warm-up discarded, median, p90 and
spread of TTFT, ms/token and decode tok/s), and scored for perplexity on the first
--ppl-tokens tokens of the shipped evaluation text. The perplexity increase of every row is
against the ONNX fp32 model, which matches transformers to ~1e-6 (tests/test_onnx_backend.py).
Also times onnxruntime-genai's own generator on the int4 folder, the runtime an app would
use, beside our onnxruntime loop.

Writes JSON (machine, versions, git revision, load average before and after) first, then
prints a table. Numbers from a busy machine are flagged by the load average: re-run on a
quiet one for figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from edgeft.atomic_io import write_json  # noqa: E402
from edgeft.sweep import compile_one
from edgeft.backends.base import Artifact  # noqa: E402
from edgeft.bench.machine import describe, package_versions  # noqa: E402
from edgeft.config import BenchSettings, load_target  # noqa: E402

MB = 1_000_000


def git_revision() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def perplexity(runner, n_tokens: int) -> tuple[float, int]:
    import numpy as np

    from edgeft.bench.prompt import eval_text

    ids = runner.tokenize(eval_text())[:n_tokens]
    z = runner.logits(ids)[:-1].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean())), len(ids)


def genai_decode(folder: Path, threads: int, prompt: list[int], new_tokens: int, runs: int) -> dict:
    """onnxruntime-genai's generator on the same folder: TTFT and decode tok/s, medians over runs."""
    import statistics

    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    ttft, tok_s = [], []
    for i in range(runs + 1):
        params = og.GeneratorParams(model)
        # min_length keeps EOS from ending the run early, so every run times new_tokens tokens.
        params.set_search_options(max_length=len(prompt) + new_tokens, min_length=len(prompt) + new_tokens, do_sample=False)
        gen = og.Generator(model, params)
        start = time.perf_counter()
        gen.append_tokens(prompt)
        gen.generate_next_token()
        first = time.perf_counter() - start
        for _ in range(new_tokens - 1):
            gen.generate_next_token()
        last = time.perf_counter() - start
        if i == 0:
            continue  # warm-up
        ttft.append(first * 1000)
        tok_s.append((new_tokens - 1) / (last - first))
    return {"ttft_ms_p50": statistics.median(ttft), "decode_tok_s_p50": statistics.median(tok_s)}


def build_reference(hf_dir: Path, out: Path) -> Path:
    """int4 with the builder's own defaults, as its README tells users to run it."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out), "-p", "int4",
           "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-onnx")
    parser.add_argument("--threads", type=int, default=0, help="runtime threads (0 = one per core)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--ppl-tokens", type=int, default=512)
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already in --out")
    args = parser.parse_args()

    from edgeft import models
    from edgeft.backends.registry import get_backend
    from edgeft.bench.run import bench
    from edgeft.stages import prepare_source, source_hash

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    source = models.resolve("default")
    hf_dir, _ = prepare_source(source, source_hash(source), out / "work")
    settings = BenchSettings(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, runs=args.runs, warmup=1)

    plan = [("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int4"), ("gguf", "q8_0"), ("gguf", "q4_k_m")]
    artifacts: dict[str, tuple[Artifact, object, float | None]] = {}
    for backend_name, quant in plan:
        profile = "onnx-fp32" if backend_name == "onnx" else "gguf"
        target = replace(load_target(profile).with_overrides(quant=quant, threads=args.threads), bench=settings)
        backend = get_backend(backend_name)
        label = f"{backend_name} {quant}"
        existing = out / (f"model-onnx-{quant}" if backend_name == "onnx" else f"model-{quant}.gguf")
        t = time.perf_counter()
        if args.reuse and existing.exists():
            artifact = Artifact(path=existing, backend=backend_name, quant=quant)
            seconds = None
        else:
            print(f"building {label} ...", file=sys.stderr, flush=True)
            artifact = compile_one(backend, hf_dir, target, out)
            seconds = time.perf_counter() - t
        artifacts[label] = (artifact, target, seconds)

    ref_dir = out / "builder-defaults-int4"
    if not (args.reuse and ref_dir.exists()):
        print("building the reference: onnxruntime-genai builder, int4 at its defaults ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        build_reference(hf_dir, ref_dir)
        ref_seconds = time.perf_counter() - t
    else:
        ref_seconds = None
    int4_target = artifacts["onnx int4"][1]
    artifacts["builder defaults int4"] = (Artifact(path=ref_dir, backend="onnx", quant="int4"), int4_target, ref_seconds)

    rows = []
    ref_ppl = None
    for label, (artifact, target, seconds) in artifacts.items():
        print(f"benchmarking {label} ...", file=sys.stderr, flush=True)
        result = bench(artifact, target)
        runner = get_backend(target.backend).load(artifact, target)
        try:
            ppl, n = perplexity(runner, args.ppl_tokens)
        finally:
            runner.close()
        if label == "onnx fp32":
            ref_ppl = ppl
        m = result["metrics"]
        rows.append({
            "label": label, "backend": target.backend, "quant": target.quant, "compile_s": seconds,
            "package_mb": m["package_mb"], "ttft_ms_p50": m["ttft_ms_p50"], "ttft_ms_p90": m["ttft_ms_p90"],
            "ms_per_token_p50": m["ms_per_token_p50"], "ms_per_token_p90": m["ms_per_token_p90"],
            "decode_tok_s_p50": m["decode_tok_s_p50"], "decode_tok_s_cv": m["decode_tok_s_cv"],
            "peak_rss_mb": m["peak_rss_mb"], "perplexity": ppl, "ppl_tokens": n,
        })
    for row in rows:
        row["ppl_increase_pct"] = (row["perplexity"] / ref_ppl - 1) * 100 if ref_ppl else None

    by_label = {r["label"]: r for r in rows}
    ours, ref = by_label["onnx int4"], by_label["builder defaults int4"]
    from edgeft.backends.onnx.runner import OnnxRunner
    from edgeft.bench.prompt import prompt_ids

    probe = OnnxRunner(artifacts["onnx int4"][0].path, threads=int4_target.resolved_threads(), context=2048)
    prompt = prompt_ids(probe.tokenize, args.prompt_tokens)
    probe.close()
    genai = genai_decode(artifacts["onnx int4"][0].path, int4_target.resolved_threads(), prompt, args.new_tokens, args.runs)

    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_revision": git_revision(),
        "machine": describe(int4_target.resolved_threads()),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "versions": package_versions(("onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir", "llama-cpp-python", "torch", "transformers")),
        "bench": {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": args.runs, "warmup": 1},
        "perplexity_reference": "onnx fp32",
        "rows": rows,
        "ours_vs_builder_defaults_int4": {
            "decode_tok_s_ratio": ours["decode_tok_s_p50"] / ref["decode_tok_s_p50"],
            "size_ratio": ours["package_mb"] / ref["package_mb"],
        },
        "onnxruntime_genai_generator_int4": genai,
    }
    write_json(out / "onnx_vs_gguf.json", report)

    from edgeft.bench.report import table

    def f(v, d=1):
        return "-" if v is None else f"{v:,.{d}f}"

    print(table([[r["label"], f(r["package_mb"]), f(r["ttft_ms_p50"]), f(r["ms_per_token_p50"], 2), f(r["decode_tok_s_p50"]),
                  f(r["decode_tok_s_cv"] * 100, 0) + "%", f(r["peak_rss_mb"]), f(r["perplexity"], 3), f(r["ppl_increase_pct"], 2) + "%"]
                 for r in rows],
                ["artifact", "size MB", "TTFT ms", "ms/token", "decode tok/s", "spread", "peak RSS MB", "perplexity", "ppl +%"]))
    ratio = report["ours_vs_builder_defaults_int4"]
    print(f"\nours int4 / builder defaults int4: decode tok/s x{ratio['decode_tok_s_ratio']:.3f}, size x{ratio['size_ratio']:.3f}")
    print(f"onnxruntime-genai generator on our int4 folder: TTFT {genai['ttft_ms_p50']:.1f} ms, decode {genai['decode_tok_s_p50']:.1f} tok/s")
    print(f"load average before {load_before[0]:.2f}, after {report['load_average_after'][0]:.2f} "
          f"on {os.cpu_count()} cores; JSON: {out / 'onnx_vs_gguf.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
