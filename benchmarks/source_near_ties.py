"""How sure the source model is of its own answers to the bench's fixed prompts, and what GGUF files
of it answer through llama.cpp.

Issue 14's tight demo answers "What is the capital of France?" in French, and the question was
whether that is damage done by pruning, training or 4-bit rounding, or the source's own doubt. For
each fixed prompt this prints the source's first-token odds (transformers, fp32, as the bench
scores it), each GGUF file's first-token odds and greedy answer through llama.cpp (as the bench
runs an artifact), and where each answer parts from the source's, with the source's probability of
both tokens there (`bench.source_model.parting`). The default GGUF is the default model's own
file, the one a user gives edgeft: the same weights as the source, run by another runtime.

    python benchmarks/source_near_ties.py
    python benchmarks/source_near_ties.py --gguf out/demo-small/model-q4_k_s.gguf --gguf out/demo-small/work/model-f16.gguf
    python benchmarks/source_near_ties.py --source out/demo-small/work/source-hf --gguf ...

Results: results/source_near_ties.json."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402

TOP = 5


def _top(probs, tokenizer, n: int = TOP) -> list[list[object]]:
    import numpy as np

    return [[tokenizer.decode([int(i)]), round(float(probs[i]), 4)] for i in np.argsort(-probs)[:n]]


def _softmax(logits):
    import numpy as np

    z = np.exp(logits - logits.max())
    return z / z.sum()


def _gguf_runner(path: Path):
    """A GGUF file loaded as `edgeft bench` loads one (llama.cpp, the default profile's settings)."""
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import get_backend
    from edgeft.config import load_target

    return get_backend("gguf").load(Artifact(path=path, backend="gguf", quant="file"), load_target("gguf"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="HF folder of the source (default: the default model, dequantized)")
    ap.add_argument("--gguf", type=Path, action="append", default=[],
                    help="a GGUF file to run through llama.cpp (repeatable; default: the default model's own file)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "source_near_ties.json")
    args = ap.parse_args()

    from edgeft import models
    from edgeft.bench.source_model import CHAT_PROMPTS, NEAR_TIE, SourceRunner, side_by_side
    from edgeft.progress import quiet_libraries

    quiet_libraries()
    files = args.gguf or [models.default_model_path()]
    with tempfile.TemporaryDirectory() as tmp:
        hf = args.source or models.materialize_hf(models.resolve(models.default_model_path()), Path(tmp) / "source-hf")
        source = SourceRunner(hf)
        first = {p: _top(_softmax(source.logits(source.own_chat_ids(p))[-1]), source.tokenizer) for p in CHAT_PROMPTS}
        print(f"source {hf} (transformers, fp32)")
        for p in CHAT_PROMPTS:
            print(f"  {p[:40]:40s} first token: {first[p][:3]}")
        runs = []
        for path in files:
            runner = _gguf_runner(path)
            try:
                rows = side_by_side(source, runner)
                odds = {p: _top(_softmax(runner.logits(source.chat_ids(p))[-1]), source.tokenizer) for p in CHAT_PROMPTS}
            finally:
                runner.close()
            print(f"{path} (llama.cpp)")
            for row in rows:
                tie = "near-tie" if row.get("near_tie") else ""
                print(f"  {row['prompt'][:40]:40s} first token: {odds[row['prompt']][:3]}  {row['ppl_vs_source_pct']:+6.1f} %  {tie}")
                print(f"      {' '.join(row['artifact'].split())[:120]}")
            runs.append({"gguf": str(path), "answers": rows, "first_token": odds,
                         "near_ties": sum(bool(r.get("near_tie")) for r in rows),
                         "same": sum(bool(r["same"]) for r in rows)})
        write(args.out, {"context": context(), "source": str(args.source or "the default model, dequantized"),
                         "near_tie_share": NEAR_TIE, "source_first_token": first, "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
