"""The shipped file with and without an importance matrix, from one finished build, in one run.

Issue 14's tight demo ships a q4_k_m file (token table at q4_0) of a distilled student, and its
quantization alone cost about a quarter of its perplexity. This takes that build's student (its
merged HF folder and f16 reference) and quantizes it three ways at the build's own level and
options: llama.cpp alone ("plain"), and weighed by an importance matrix measured on the build's
training split, at the build's token cap and at a quarter of it. Then the whole source, unpruned
and untrained, at q4_0 (which fits the same 85 MB), plain and weighed. Each file is benchmarked
against the source (the teacher) on the build's held-out split, as the build's own bench does:
perplexity increase, KL, top-1, quantization loss alone, and the answers to the fixed prompts.

    python benchmarks/imatrix_quality.py --build out/demo-small
    python benchmarks/imatrix_quality.py --build out/demo-small --only plain,imatrix

Results: results/imatrix_quality.json."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402

# name -> (model: the build's "student" or its "source", level: None for the build's own, share of the
# build's importance token cap: None for llama.cpp alone)
VARIANTS = {
    "plain": ("student", None, None),
    "imatrix": ("student", None, 1.0),
    "imatrix-quarter": ("student", None, 0.25),
    # The whole source at a lower level that fits the same budget (no pruning, no training), with the
    # same table type; its importance matrix is measured on the same training split.
    "source-q4_0-plain": ("source", "q4_0", None),
    "source-q4_0-imatrix": ("source", "q4_0", 1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", type=Path, required=True, help="a finished distilling `edgeft build` folder (GGUF)")
    ap.add_argument("--only", default=None, help="comma-separated variant names: " + ", ".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "imatrix_quality.json")
    args = ap.parse_args()

    from edgeft import importance
    from edgeft.backends.base import Artifact
    from edgeft.backends.gguf.backend import quantize
    from edgeft.backends.gguf.convert import convert
    from edgeft.backends.gguf.imatrix import gguf_importance
    from edgeft.bench.run import bench
    from edgeft.config import load_target

    work = args.build / "work"
    manifest = json.loads((args.build / "manifest.json").read_text())
    target = load_target(args.build / "target.toml")
    data, source = work / "data", work / "source-hf"
    models = {"student": (work / "merged", Path(manifest["stages"]["compile"]["reference"])), "source": (source, None)}
    names = args.only.split(",") if args.only else list(VARIANTS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="imatrix-") as tmp:
        for name in names:
            which, level, share = VARIANTS[name]
            hf, reference = models[which]
            if reference is None:
                reference = convert(hf, Path(tmp) / f"{which}-f16.gguf", "f16")
                models[which] = (hf, reference)
            level = level or target.quant
            weights, measured = None, None
            if share is not None:
                path = Path(tmp) / f"{name}.safetensors"
                measured = importance.collect(hf, data / "train.jsonl", path, max_tokens=int(importance.MAX_TOKENS * share))
                weights = gguf_importance(hf, importance.load(path))
            file = Path(tmp) / f"model-{name}.gguf"
            quantize(reference, file, level, threads=target.resolved_threads(),
                     embedding_type=target.options.embedding_type, importance=weights)
            ref = Artifact(path=reference, backend="gguf", quant="f16", files=(reference,))
            result = bench(Artifact(path=file, backend="gguf", quant=level, files=(file,)),
                           target.with_overrides(quant=level), reference=ref, eval_data=data / "eval.jsonl", source=source)
            m = result["metrics"]
            rows.append({"variant": name, "model": which, "quant": level, "importance": measured,
                         "package_bytes": file.stat().st_size,
                         **{k: m.get(k) for k in ("ppl", "source_ppl", "ppl_vs_source_pct", "kl_vs_source_mean",
                                                  "top1_vs_source_pct", "ppl_increase_pct", "kl_mean",
                                                  "answer_ppl_vs_source_pct", "answer_ppl_vs_source_mean_pct",
                                                  "answers_same", "answers_total")},
                         "answers": [{"prompt": a["prompt"], "source": a["source"], "artifact": a["artifact"],
                                      "ppl_vs_source_pct": a["ppl_vs_source_pct"]} for a in result["answers"]],
                         "budget": {b["budget"]: b["status"] for b in result["budget"]}})
            r = rows[-1]
            print(f"{name:16s} ppl vs source {r['ppl_vs_source_pct']:+6.1f} %  quantization alone {r['ppl_increase_pct']:+6.1f} %  "
                  f"answers: worst {r['answer_ppl_vs_source_pct']:+6.1f} %, mean {r['answer_ppl_vs_source_mean_pct']:+6.1f} %")
    write(args.out, {"context": context(), "build": str(args.build), "quant": target.quant,
                     "embedding_type": target.options.embedding_type, "rows": rows})


if __name__ == "__main__":
    main()
