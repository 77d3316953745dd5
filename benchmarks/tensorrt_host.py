"""The TensorRT backend's host half on the default model, on this CPU: the TensorRT-ready export's
size and its parity with transformers in onnxruntime, and ModelOpt's int8/int4 against the fp32
graph (perplexity, KL, top-1 on the bench's shipped text, scored by the bench's own scorer).

    python benchmarks/tensorrt_host.py                 # default model, fp32 fp16 int8 int4
    python benchmarks/tensorrt_host.py --tokens 1024   # a shorter scoring text

JSON first (benchmarks/results/tensorrt_host.json), then a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import write  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=Path("out/tensorrt-host"))
    parser.add_argument("--tokens", type=int, default=2048, help="evaluation tokens scored (512-token windows)")
    parser.add_argument("--result", type=Path, default=Path(__file__).parent / "results" / "tensorrt_host.json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.backends.registry import get_backend
    from edgeft.backends.tensorrt.runner import OrtRunner
    from edgeft.bench.perplexity import eval_ids, score
    from edgeft.config import load_target
    from edgeft.stages import prepare_source, resolve_for, source_hash
    from edgeft.sweep import compile_level

    backend = get_backend("tensorrt")
    source = resolve_for(args.model, ["tensorrt"])
    work = args.out / "work"
    src_key = source_hash(source)
    hf_dir, _ = prepare_source(source, src_key, work)
    rows = {}
    for level in ("fp32", "fp16", "int8", "int4"):
        target = load_target("tensorrt").with_overrides(quant=level)
        t = time.perf_counter()
        built = compile_level(backend, hf_dir, target, args.out / level, work, src_key, source.name)
        rows[level] = {"seconds": round(time.perf_counter() - t, 1), "package_mb": built.artifact.package_bytes() / 1e6,
                       "artifact": str(built.artifact.path), "reference": str(built.reference.path)}
        print(f"{level}: {rows[level]['package_mb']:.1f} MB in {rows[level]['seconds']} s", file=sys.stderr)

    fp32 = OrtRunner(Path(rows["fp32"]["artifact"]), threads=2, context=4096)
    ids, text = eval_ids(fp32.tokenize, None, args.tokens)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([ids[:512]])).logits[0].numpy()
    got = fp32.logits(ids[:512])
    parity = {"max_rel_logit_error": float(np.abs(got - want).max() / np.abs(want).max()),
              "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()), "positions": 512}
    cached = fp32.generate(ids[:64], 32).tokens
    with torch.no_grad():
        hf_greedy = model.generate(torch.tensor([ids[:64]]), max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, 64:].tolist()
    parity["greedy_32_identical"] = cached == hf_greedy
    for level in ("int8", "int4"):  # fp16 has no CPU kernels for every op in onnxruntime; its check is the device's
        runner = OrtRunner(Path(rows[level]["artifact"]), threads=2, context=4096)
        rows[level]["quality_vs_fp32"] = score(runner, ids, 512, fp32)
        runner.close()
    write(args.result, {"model": source.label, "eval_tokens": len(ids), "text": text, "fp32_parity": parity, "levels": rows})
    print(f"fp32 graph vs transformers: max relative logit error {parity['max_rel_logit_error']:.2e}, "
          f"greedy 32 identical: {parity['greedy_32_identical']}")
    print("| level | package MB | ppl | ppl +% vs fp32 | KL mean | top-1 % |")
    print("|---|---|---|---|---|---|")
    for level, r in rows.items():
        q = r.get("quality_vs_fp32") or {}
        print(f"| {level} | {r['package_mb']:.1f} | {q.get('ppl', float('nan')):.3f} | {q.get('ppl_increase_pct', 0):+.2f} | "
              f"{q.get('kl_mean', 0):.4f} | {q.get('top1_agree_pct', 100):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
