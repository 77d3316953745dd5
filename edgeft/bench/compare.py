"""`compare`: several quantization levels (and backends) of one model, built once each from the
same conversion, benchmarked side by side against the same reference and the same tokens.

Writes compare.json (every number), compare.md (the table) and compare.png (the plot), and
names the smallest level that meets every budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgeft import __version__, models
from edgeft.atomic_io import write_json, write_text
from edgeft.backends.registry import get_backend
from edgeft.config import AUTO_QUANT, Target
from edgeft.errors import ConfigError
from edgeft.progress import progress, status

SCHEMA_VERSION = 1

# (header, metric key, format) for the table; every metric is in compare.json whatever is shown here.
COLUMNS = [
    ("size MB", "package_mb", "{:.4g}"),
    ("TTFT p50 ms", "ttft_ms_p50", "{:.1f}"),
    ("TTFT p90 ms", "ttft_ms_p90", "{:.1f}"),
    ("ms/token p50", "ms_per_token_p50", "{:.2f}"),
    ("decode tok/s", "decode_tok_s_p50", "{:.1f}"),
    ("prefill tok/s", "prefill_tok_s_p50", "{:.0f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("ppl", "ppl", "{:.3f}"),
    ("ppl +%", "ppl_increase_pct", "{:+.2f}"),
    ("KL mean", "kl_mean", "{:.4f}"),
    ("KL p99", "kl_p99", "{:.4f}"),
    ("top-1 %", "top1_agree_pct", "{:.1f}"),
]


@dataclass
class CompareResult:
    data: dict
    json_path: Path
    md_path: Path
    png_path: Path


def parse_levels(text: str | None, target: Target) -> list[str]:
    """`--quant f16,q8_0,...`: each a known level of the target's backend (checked all at once)."""
    from edgeft.backends.registry import quant_levels

    if not text:
        return [target.quant]
    levels = [q.strip() for q in text.split(",") if q.strip()]
    bad = [q for q in levels if q == AUTO_QUANT or q not in quant_levels(target.backend)]
    if bad:
        raise ConfigError([("--quant", f"unknown level(s) {', '.join(bad)} for backend {target.backend} "
                                       f"(known: {', '.join(quant_levels(target.backend))})")])
    if len(set(levels)) != len(levels):
        raise ConfigError([("--quant", f"a level is listed twice: {text}")])
    return levels


def _first_failure(row: dict) -> str | None:
    failed = [b["budget"] for b in row["budget"] if b["status"] == "FAIL"]
    return failed[0] if failed else None


def recommend(rows: list[dict]) -> tuple[dict | None, str]:
    """The smallest package that meets every budget; else which budget stops each level."""
    passing = [r for r in rows if r["pass"]]
    if passing:
        best = min(passing, key=lambda r: r["metrics"]["package_mb"])
        return best, f"recommended: {best['backend']} {best['quant']} ({best['metrics']['package_mb']:.1f} MB), the smallest that meets every budget"
    budgets = [b["budget"] for b in rows[0]["budget"]] if rows else []
    everywhere = [k for k in budgets if all(any(b["budget"] == k and b["status"] == "FAIL" for b in r["budget"]) for r in rows)]
    if everywhere:
        return None, f"no level meets every budget: {everywhere[0]} fails at every level"
    return None, "no level meets every budget: " + ", ".join(f"{r['backend']} {r['quant']} fails {_first_failure(r)}" for r in rows)


def compare(model: str, targets: list[Target], levels: dict[str, list[str]], out_dir: Path, *,
            eval_data: Path | None = None) -> CompareResult:
    """Build every (target, level) once from one source and one conversion, then bench each
    against the unquantized conversion (the reference) on the same evaluation tokens."""
    from edgeft.bench.run import bench
    from edgeft.pipeline import compile_level, prepare_source, source_hash

    started = time.perf_counter()
    source = models.resolve(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    hf_dir, _ = prepare_source(source, source_hash(source), work)
    src_key = source_hash(source)
    rows: list[dict] = []
    reference_path: str | None = None
    shared_reference = None
    # Backends with an unquantized conversion go first: theirs is the reference for backends without one.
    ordered = sorted(targets, key=lambda t: not hasattr(get_backend(t.backend), "intermediate_dtype"))
    for target in ordered:
        backend = get_backend(target.backend)
        backend.check()
        for level in progress(levels[target.name], desc=f"compare {target.backend}"):
            level_target = target.with_overrides(quant=level)
            level_dir = out_dir / f"{target.backend}-{level}"
            status(f"compare: compiling {target.backend} {level} ...")
            artifact, reference = compile_level(backend, hf_dir, level_target, level_dir, work, src_key, source.path.stem)
            status(f"compare: benchmarking {target.backend} {level} ...")
            reference = reference or shared_reference
            shared_reference = shared_reference or reference
            result = bench(artifact, level_target, reference=reference, eval_data=eval_data, source=hf_dir)
            write_json(level_dir / "bench.json", result)
            if reference is not None:
                reference_path = str(reference.path)
            rows.append({"target": target.name, "backend": target.backend, "quant": level,
                         "artifact": str(artifact.path), "bench_json": str(level_dir / "bench.json"),
                         "metrics": result["metrics"], "budget": result["budget"], "pass": result["pass"],
                         "eval": result["eval"], "machine": result["machine"], "versions": result["versions"]})
    digests = {r["eval"]["sha256"] for r in rows if r.get("eval")}
    best, verdict = recommend(rows)
    data = {
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "edgeft": __version__,
        "model": source.label,
        "reference": reference_path,
        "same_eval_tokens": len(digests) <= 1,
        "budget": {t.name: {k: v for k, v in vars(t.budget).items() if v is not None} for t in targets},
        "rows": rows,
        "recommended": {"backend": best["backend"], "quant": best["quant"], "artifact": best["artifact"]} if best else None,
        "verdict": verdict,
        "seconds": round(time.perf_counter() - started, 1),
    }
    json_path, md_path, png_path = out_dir / "compare.json", out_dir / "compare.md", out_dir / "compare.png"
    write_json(json_path, data)
    write_text(md_path, markdown(data))
    from edgeft.bench.plot import compare_plot

    compare_plot(data, png_path)
    return CompareResult(data, json_path, md_path, png_path)


def table_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    from edgeft.bench.report import SPREAD_WARN_CV

    header = ["backend", "level", *[c[0] for c in COLUMNS], "spread", "budget"]
    rows = []
    for r in data["rows"]:
        cells = [r["backend"], r["quant"]]
        for _, key, fmt in COLUMNS:
            value = r["metrics"].get(key)
            cells.append("-" if value is None else fmt.format(value))
        # the widest run-to-run spread of the timings; above the warning level the medians are not trustworthy
        cv = max(r["metrics"].get(f"{k}_cv", 0.0) for k in ("ttft_ms", "ms_per_token", "decode_tok_s", "prefill_tok_s"))
        cells.append(f"{cv:.0%} noisy" if cv > SPREAD_WARN_CV else f"{cv:.0%}")
        mark = "PASS" if r["pass"] else f"FAIL {_first_failure(r)}"
        if data["recommended"] and r["artifact"] == data["recommended"]["artifact"]:
            mark += " <- recommended"
        rows.append(cells + [mark])
    return header, rows


def markdown(data: dict) -> str:
    header, rows = table_rows(data)
    lines = [f"# edgeft compare: {data['model']}", "",
             f"Reference for ppl +%, KL and top-1: `{data['reference']}`. "
             f"Machine: {data['rows'][0]['machine']['cpu']}, {data['rows'][0]['machine']['threads']} threads." if data["rows"] else "",
             "", "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"**{data['verdict']}**", ""]
    return "\n".join(lines)
