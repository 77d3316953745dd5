"""The whole TensorRT path on one machine with an NVIDIA GPU and TensorRT, end to end.

    pip install --extra-index-url https://pypi.nvidia.com -e '.[tensorrt]'
    python benchmarks/tensorrt_device.py                       # the default model, every level
    python benchmarks/tensorrt_device.py --model ./hf-folder --levels fp16,int4 --out out/trt

For each level: the host half (export, ModelOpt), the engine build (timed, cached), parity of the
fp32 engine with transformers on the GPU, then `edgeft bench` (a child process, as for every
backend): latency, engine size, peak GPU memory, and quality against the level's reference and the
source model. Prints one table; writes benchmarks/results/tensorrt_device.json. Without a GPU or
TensorRT it stops at once with the one-line reason `edgeft build --target tensorrt` gives.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import write  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--levels", default="fp32,fp16,int8,int4")
    parser.add_argument("--out", type=Path, default=Path("out/tensorrt-device"))
    parser.add_argument("--result", type=Path, default=Path(__file__).parent / "results" / "tensorrt_device.json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from edgeft.backends.registry import get_backend
    from edgeft.bench.run import bench
    from edgeft.config import load_target
    from edgeft.errors import BackendUnavailable
    from edgeft.stages import prepare_source, resolve_for, source_hash
    from edgeft.sweep import compile_level

    backend = get_backend("tensorrt")
    try:
        backend.check()
    except BackendUnavailable as exc:
        print(f"tensorrt_device: {exc.reason}", file=sys.stderr)
        return 2
    source = resolve_for(args.model, ["tensorrt"])
    work = args.out / "work"
    src_key = source_hash(source)
    hf_dir, _ = prepare_source(source, src_key, work)
    rows = []
    for level in args.levels.split(","):
        target = load_target("tensorrt").with_overrides(quant=level)
        t = time.perf_counter()
        built = compile_level(backend, hf_dir, target, args.out / level, work, src_key, source.name)
        host_s = time.perf_counter() - t
        t = time.perf_counter()
        runner = backend.load(built.artifact, target)  # builds (or reuses) the engine
        engine_s = time.perf_counter() - t
        parity = None
        if level == "fp32":  # the engine against transformers on the same GPU
            from transformers import AutoModelForCausalLM

            ids = runner.tokenize("The capital of France is Paris. Edge devices run small language models. " * 4)
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).cuda().eval()
            with torch.no_grad():
                want = model(torch.tensor([ids], device="cuda")).logits[0].float().cpu().numpy()
            got = runner.logits(ids)
            parity = float(np.abs(got - want).max() / np.abs(want).max())
            del model
        counters = runner.perf_counters()
        runner.close()
        result = bench(built.artifact, target, reference=built.reference, source=hf_dir)
        rows.append({"level": level, "host_seconds": round(host_s, 1), "engine_build_seconds": round(engine_s, 1),
                     "package_mb": result["metrics"]["package_mb"], "engine": counters, "fp32_engine_parity": parity,
                     "metrics": result["metrics"], "runtime": result["machine"]["runtime"], "pass": result["pass"]})
    write(args.result, {"model": source.label, "rows": rows})
    print("| level | package MB | engine MB | GPU peak MB | TTFT p50 ms | decode tok/s | ppl +% vs reference | ppl +% vs source |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m, e = r["metrics"], r["engine"] or {}
        print(f"| {r['level']} | {m['package_mb']:.1f} | {e.get('engine_mb', 0):.1f} | {e.get('gpu_peak_allocated_mb', 0):.0f} | "
              f"{m['ttft_ms_p50']:.1f} | {m['decode_tok_s_p50']:.1f} | {m.get('ppl_increase_pct') or 0:+.2f} | "
              f"{m.get('ppl_vs_source_pct') or 0:+.2f} |")
    print(json.dumps({"result": str(args.result)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
