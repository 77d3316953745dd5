"""Does GPTQ's error feedback (`[gguf] gptq`) round a build's file better than ggml's importance-weighed rounding alone?

Takes a finished GGUF build folder (its work/ holds the merged or source HF model, model-f16.gguf and
the importance pass) and quantizes its f16 file again at the build's level twice: weighed by the
build's importance matrix only, and then rounded by GPTQ under the second moments of the same pass
(measured here when the build did not ask for them; never on the held-out split). Both files are
benched the same way, with what the build's own bench measured (profile, source, reference, text).

    PYTHONPATH=. .venv/bin/python benchmarks/gptq_quality.py --build /tmp/tight
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import context, write  # noqa: E402


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
    from edgeft import importance as imp
    from edgeft.backends.gguf.backend import quantize
    from edgeft.backends.gguf.imatrix import gguf_importance
    from edgeft.config import load_target

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gptq_quality.json")
    args = p.parse_args()
    build = args.build
    manifest = json.loads((build / "manifest.json").read_text())
    target = load_target(str(build / "target.toml"))
    model_dir = build / "work" / "merged" if (build / "work" / "merged").is_dir() else build / "work" / "source-hf"
    folder, work = build / "work" / "importance", build / "gptq"
    work.mkdir(exist_ok=True)
    moments, t_h = folder / imp.MOMENTS, 0.0
    if not moments.is_file():
        t = time.perf_counter()
        text = build / manifest["stages"]["importance"]["file"]  # the text the build's importance matrix was measured on
        imp.collect(model_dir, text, work / imp.FILE, moments=work / imp.MOMENTS)
        moments, t_h = work / imp.MOMENTS, time.perf_counter() - t
    weights = gguf_importance(model_dir, imp.load(folder / imp.FILE))
    f16, level, table = build / "work" / "model-f16.gguf", target.quant, target.options.embedding_type
    rows, seconds = {}, {}
    for label, extra in (("importance only", {}), ("gptq", {"moments": moments, "model_dir": model_dir})):
        f = work / f"model-{level}-{label.split()[0]}.gguf"
        t = time.perf_counter()
        quantize(f16, f, level, embedding_type=table, importance=weights, **extra)
        seconds[label] = round(time.perf_counter() - t, 1)
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
    result = {"context": context(), "build": str(build), "model": str(model_dir), "level": level, "table": table,
              "moments_s": round(t_h, 1), "quantize_s": seconds, "rows": rows}
    write(args.out, result)
    print(f"quantize: {seconds}; {args.out}")


if __name__ == "__main__":
    main()
