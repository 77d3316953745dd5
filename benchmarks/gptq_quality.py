"""Does GPTQ's error feedback round a build's q5_0 tensors better than ggml's importance-weighed rounding?

Takes a finished GGUF build folder (its work/ holds the merged or source HF model, model-f16.gguf and
the training split), copies its shipped file, and rewrites every q5_0 tensor of the copy with
`edgeft.backends.gguf.gptq` under the input second moments measured on the build's training split
(the text the build's importance matrix was measured on; never the held-out split). Then both files
are benched the same way, with what the build's own bench measured (profile, source, reference, text).

    PYTHONPATH=. .venv/bin/python benchmarks/gptq_quality.py --build /tmp/tight [--tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import context, write  # noqa: E402


def hessians(model_dir: Path, records: Path, max_tokens: int) -> dict[str, np.ndarray]:
    """E[x xᵀ] of every linear layer's input, and of the head's, by HF weight name."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.importance import input_sums, read_token_rows

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums, tokens = input_sums(model, read_token_rows(records, max_tokens), full=True)
    return {k: (v / tokens).numpy() for k, v in sums.items()}


def rewrite(quantized: Path, unquantized: Path, h_by_gguf: dict[str, np.ndarray]) -> list[str]:
    """Every q5_0 tensor of `quantized` with a second-moment matrix, rounded again by GPTQ, in place."""
    import mmap

    from edgeft.backends.gguf.gptq import gptq_q5_0, q5_0_bytes
    from edgeft.backends.gguf.header import read_header

    q_head, f_head = read_header(quantized), read_header(unquantized)
    sources = {t.name: t for t in f_head.tensors}
    f_map = np.memmap(unquantized, mode="r", dtype=np.uint8)
    done = []
    with open(quantized, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as out:
        for t in q_head.tensors:
            if t.ggml_type != 6 or t.name not in h_by_gguf:
                continue
            src = sources[t.name]
            dtype = np.float32 if src.ggml_type == 0 else np.float16
            n, rows = src.shape[0], int(np.prod(src.shape[1:]))
            start = f_head.data_start + src.offset
            w = np.asarray(f_map[start:start + n * rows * dtype().itemsize].view(dtype), dtype=np.float32).reshape(rows, n)
            codes, scales = gptq_q5_0(w, h_by_gguf[t.name])
            data = q5_0_bytes(codes, scales)
            assert len(data) == t.n_bytes(), t.name
            at = q_head.data_start + t.offset
            out[at:at + len(data)] = data
            done.append(t.name)
        out.flush()
    return done


def bench(file: Path, build: Path, out: Path) -> dict:
    """`edgeft bench FILE` with what the build's own bench measured: its profile, source, reference and text."""
    from edgeft.bench.run import build_inputs

    inputs = build_inputs(build)
    cmd = [sys.executable, "-m", "edgeft.cli", "--quiet", "bench", str(file), "--target", str(build / "target.toml"),
           "--json", str(out)]
    for key in ("source", "reference", "eval_data"):
        if key in inputs:
            cmd += [f"--{key.replace('_', '-')}", str(inputs[key])]
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    from edgeft.backends.gguf.imatrix import gguf_importance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", type=Path, required=True)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gptq_quality.json")
    args = p.parse_args()
    build = args.build
    manifest = json.loads((build / "manifest.json").read_text())
    shipped = build / manifest["stages"]["compile"]["artifact"]
    model_dir = build / "work" / "merged" if (build / "work" / "merged").is_dir() else build / "work" / "source-hf"
    work = build / "gptq"
    work.mkdir(exist_ok=True)
    t = time.perf_counter()
    text = build / manifest["stages"]["importance"]["file"]  # the text the build's importance matrix was measured on
    h = gguf_importance(model_dir, hessians(model_dir, text, args.tokens))
    t_h = time.perf_counter() - t
    copy = work / shipped.name.replace(".gguf", "-gptq.gguf")
    shutil.copyfile(shipped, copy)
    t = time.perf_counter()
    names = rewrite(copy, build / "work" / "model-f16.gguf", h)
    t_r = time.perf_counter() - t
    rows = {}
    for label, f in (("importance (the build)", shipped), ("gptq", copy)):
        r = bench(f, build, work / f"bench-{f.stem}.json")
        m = r["metrics"]
        rows[label] = {"file": str(f), "ppl_vs_source_pct": m["ppl_vs_source_pct"], "kl_vs_source_mean": m["kl_vs_source_mean"],
                       "top1_vs_source_pct": m["top1_vs_source_pct"], "ppl_increase_pct": m["ppl_increase_pct"],
                       "kl_mean": m["kl_mean"], "top1_agree_pct": m["top1_agree_pct"],
                       "answer_worst_pct": m["answer_ppl_vs_source_pct"], "answer_mean_pct": m["answer_ppl_vs_source_mean_pct"],
                       "answers": [{"prompt": a["prompt"], "artifact": a["artifact"], "pct": a["ppl_vs_source_pct"]} for a in r["answers"]]}
        print(label, {k: v for k, v in rows[label].items() if k != "answers"})
        for a in rows[label]["answers"]:
            print(f"   {a['pct']:+7.1f} %  {' '.join(a['artifact'].split())[:110]}")
    result = {"context": context(), "build": str(build), "model": str(model_dir), "text": str(text), "tokens": args.tokens,
              "tensors_rewritten": len(names),
              "hessian_s": round(t_h, 1), "rewrite_s": round(t_r, 1), "rows": rows}
    write(args.out, result)
    print(f"{len(names)} tensors rewritten; hessians {t_h:.0f} s, rewrite {t_r:.0f} s; {args.out}")


if __name__ == "__main__":
    main()
