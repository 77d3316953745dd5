"""`compare`: several quantization levels (and backends) of one model, built once each from the
same conversion, benchmarked side by side against the same reference and the same tokens.

Writes compare.json (every number), compare.md (the table) and compare.png (the plot), and
names the smallest level that meets every budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgeft import __version__
from edgeft.atomic_io import write_json, write_text
from edgeft.backends.registry import get_backend
from edgeft.config import AUTO_QUANT, Target
from edgeft.errors import ConfigError

SCHEMA_VERSION = 1

# (header, metric key, format) for the table: the budget's own measures (p90 timings; quality against the
# source, the model you gave), then quantization loss alone, named as such. Every metric, medians and
# the loss against each backend's unquantized export in full, is in compare.json whatever is shown here.
COLUMNS = [
    ("MB", "package_mb", "{:.4g}"),
    ("TTFT p90 ms", "ttft_ms_p90", "{:.1f}"),
    ("ms/tok p90", "ms_per_token_p90", "{:.2f}"),
    ("RSS MB", "peak_rss_mb", "{:.0f}"),
    ("ppl vs src", "ppl_vs_source_pct", "{:+.1f}%"),
    ("KL vs src", "kl_vs_source_mean", "{:.3f}"),
    ("top-1 vs src", "top1_vs_source_pct", "{:.1f}%"),
    ("worst answer", "answer_ppl_vs_source_pct", "{:+.0f}%"),
    ("quant. alone", "ppl_increase_pct", "{:+.1f}%"),
]
COLUMN_NOTE = ("\"vs src\" and \"worst answer\" (the worst fixed-prompt answer): against the source model, as the budget "
               "judges; \"quant. alone\": perplexity against the backend's own unquantized export")


@dataclass
class CompareResult:
    data: dict
    json_path: Path
    md_path: Path
    png_path: Path


def parse_levels(text: str | None, targets: list[Target]) -> dict[str, list[str]]:
    """`--quant f16,q8_0,int4,...` over one or several targets: each target takes the listed levels of
    its own backend (its profile's level when none is listed); a level no target's backend has is an
    error, reported all at once. Without `--quant`, one target compares every level `--quant auto`
    weighs (what "compare the levels" means), several targets each their profile's level (what
    comparing backends means)."""
    from edgeft.backends.registry import info, quant_levels

    if not text:
        if len(targets) == 1:  # one target: every level `--quant auto` weighs, and the profile's own
            t = targets[0]
            spec = info(t.backend)
            levels = [*spec.auto_levels, *([] if t.quant in spec.auto_levels or t.quant == AUTO_QUANT else [t.quant])]
            return {t.name: sorted(levels, key=lambda q: spec.bits_per_weight.get(q, float("inf")))}
        return {t.name: [t.quant] for t in targets}  # several: the backends side by side, each at its profile's level
    levels = [q.strip() for q in text.split(",") if q.strip()]
    if len(set(levels)) != len(levels):
        raise ConfigError([("--quant", f"a level is listed twice: {text}")])
    known = {t.backend: quant_levels(t.backend) for t in targets}
    bad = [q for q in levels if q == AUTO_QUANT or not any(q in ls for ls in known.values())]
    if bad:
        names = "; ".join(f"{b}: {', '.join(ls)}" for b, ls in known.items())
        raise ConfigError([("--quant", f"unknown level(s) {', '.join(bad)} for backend(s) {', '.join(known)} (known: {names})")])
    return {t.name: [q for q in levels if q in known[t.backend]] or [t.quant] for t in targets}


def _first_failure(row: dict) -> str | None:
    """The first failing budget line with its value and limit: which line alone is not why."""
    failed = [b for b in row["budget"] if b["status"] == "FAIL"]
    if not failed:
        return None
    b = failed[0]
    return f"{b['budget']} {b['value']:.3g} > {b['limit']:g}" if b.get("value") is not None else b["budget"]


def _close_calls(row: dict) -> list[str]:
    """A timing line the row passes by less than its own run-to-run spread: the next run, on a busier
    machine, may fail it, so a recommendation resting on it says so."""
    from edgeft.bench.budgets import TIMED_BUDGETS

    notes = []
    for b in row["budget"]:
        cv = row["metrics"].get(b["budget"].removesuffix("_p90") + "_cv")
        if b["status"] == "PASS" and b["budget"] in TIMED_BUDGETS and cv and b.get("value") is not None \
                and b["value"] * (1 + cv) >= b["limit"]:
            notes.append(f"its {b['budget']} ({b['value']:.4g}) passes the {b['limit']:g} line by less than its run-to-run "
                         f"spread ({cv:.0%}): a busier run may fail it")
    return notes


def recommend(rows: list[dict], *, by_model: bool = False) -> tuple[dict | None, str]:
    """The smallest package that meets every budget; else which budget stops each level."""
    def name(r: dict) -> str:
        return f"{r['model']} {r['backend']} {r['quant']}" if by_model else f"{r['backend']} {r['quant']}"

    passing = [r for r in rows if r["pass"]]
    if passing:
        best = min(passing, key=lambda r: r["metrics"]["package_mb"])
        verdict = f"recommended: {name(best)} ({best['metrics']['package_mb']:.1f} MB), the smallest that meets every budget"
        return best, verdict + "".join(f"; {note}" for note in _close_calls(best))
    budgets = [b["budget"] for b in rows[0]["budget"]] if rows else []
    everywhere = [k for k in budgets if all(any(b["budget"] == k and b["status"] == "FAIL" for b in r["budget"]) for r in rows)]
    if everywhere:
        return None, f"no level meets every budget: {everywhere[0]} fails at every level"
    return None, "no level meets every budget: " + ", ".join(f"{name(r)} fails {_first_failure(r)}" for r in rows)


def _slug(label: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(label).name).strip("-") or "model"


def _model_rows(model: str, targets: list[Target], levels: dict[str, list[str]], out_dir: Path,
                eval_data: Path | None) -> tuple[str, list[dict], dict[str, str]]:
    """One model's (label, rows, each backend's reference): every level built from one conversion."""
    from edgeft.bench.against import own_file
    from edgeft.pipeline import importance_stage
    from edgeft.stages import prepare_source, resolve_for, source_hash
    from edgeft.sweep import bench_levels, compile_levels, weighs_importance

    source = resolve_for(model, [t.backend for t in targets])
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    src_key = source_hash(source)
    hf_dir, _ = prepare_source(source, src_key, work)
    rows: list[dict] = []
    references: dict[str, str] = {}
    for target in targets:
        backend = get_backend(target.backend)
        backend.check()
        names = levels[target.name]
        dirs = {level: out_dir / f"{target.backend}-{level}" for level in names}
        # the shipped prompts' importance matrix, as a build that trains nothing would weigh these levels by
        found: dict = {}
        weights = importance_stage(hf_dir, src_key, target, work, found, levels=names)
        compiled = compile_levels(backend, hf_dir, target, names, dirs.__getitem__, work, src_key, source.name, "compare",
                                  weights)
        # the model's own file in this backend's format (the embedded GGUFs): its answers are each level's floor,
        # answered once and then read from the cache (`own_answers`)
        source_file = own_file(source.path, target.backend)
        for lv in bench_levels(compiled, target, eval_data=eval_data, source=hf_dir, what="compare", source_file=source_file):
            result = lv.result
            level_dir = dirs[lv.artifact.quant]
            write_json(level_dir / "bench.json", result)
            references[target.backend] = str(lv.reference.path)
            rows.append({"model": source.label, "target": target.name, "backend": target.backend, "quant": lv.artifact.quant,
                         "artifact": str(lv.artifact.path), "reference": str(lv.reference.path),
                         "bench_json": str(level_dir / "bench.json"),
                         "importance": found.get("importance") if weights is not None
                         and weighs_importance(target.backend, target.with_overrides(quant=lv.artifact.quant)) else None,
                         "source_file": str(source_file.path) if source_file is not None else None,
                         "metrics": result["metrics"], "latency_runs": len(result["latency_tries"]),
                         "budget": result["budget"], "pass": result["pass"],
                         "eval": result["eval"], "machine": result["machine"], "versions": result["versions"]})
    return source.label, rows, references


def compare(model: "str | list[str]", targets: list[Target], levels: dict[str, list[str]], out_dir: Path, *,
            eval_data: Path | None = None) -> CompareResult:
    """Build every (target, level) once from one source, each backend's levels from its own
    unquantized reference (made once), then bench each against that reference and the source on
    the same evaluation tokens: the sweep `--quant auto` runs too (`edgeft.sweep`).

    Several models (a list) share one table and plot, each in its own subfolder and each measured
    against its own source; their tokenizers differ, so the same text is scored as different tokens."""
    started = time.perf_counter()
    models = [model] if isinstance(model, str) else list(model)
    if len(set(models)) != len(models):
        raise ConfigError([("--models", f"a model is listed twice: {', '.join(models)}")])
    labels: list[str] = []
    rows: list[dict] = []
    references: dict[str, str] = {}
    same_tokens = True
    for m in models:
        label, model_rows, refs = _model_rows(m, targets, levels, out_dir if len(models) == 1 else out_dir / _slug(m),
                                              eval_data)
        labels.append(label)
        rows += model_rows
        references.update({b if len(models) == 1 else f"{label} {b}": p for b, p in refs.items()})
        same_tokens &= len({r["eval"]["sha256"] for r in model_rows if r.get("eval")}) <= 1
    best, verdict = recommend(rows, by_model=len(models) > 1)
    data = {
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "edgeft": __version__,
        "model": labels[0] if len(labels) == 1 else " vs ".join(labels),
        "models": labels,
        # each backend's levels are measured against its own unquantized reference
        "reference": next(iter(references.values())) if len(set(references.values())) == 1 else None,
        "references": references,
        "same_eval_tokens": same_tokens,  # within each model: its levels scored the same tokens
        "budget": {t.name: {k: v for k, v in vars(t.budget).items() if v is not None} for t in targets},
        "rows": rows,
        "recommended": {"model": best["model"], "backend": best["backend"], "quant": best["quant"],
                        "artifact": best["artifact"]} if best else None,
        "verdict": verdict,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out_dir / "compare.json", out_dir / "compare.md", out_dir / "compare.png"
    write_json(json_path, data)
    write_text(md_path, markdown(data))
    from edgeft.bench.plot import compare_plot

    compare_plot(data, png_path)
    return CompareResult(data, json_path, md_path, png_path)


def series(row: dict, data: dict) -> str:
    """What a row is called in the table's first columns and the plot's legend: its backend, and its
    model when several are compared."""
    return f"{row['model']} {row['backend']}" if len(data.get("models") or ()) > 1 else row["backend"]


def table_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    from edgeft.bench.report import SPREAD_WARN_CV

    several = len(data.get("models") or ()) > 1
    header = [*(["model"] if several else []), "backend", "level", *[c[0] for c in COLUMNS], "spread", "budget"]
    rows = []
    for r in data["rows"]:
        cells = [*([r["model"]] if several else []), r["backend"], r["quant"] + ("*" if r.get("importance") else "")]
        for _, key, fmt in COLUMNS:
            value = r["metrics"].get(key)
            cells.append("-" if value is None else fmt.format(value))
        # the widest run-to-run spread of the timings; above the warning level the medians are not trustworthy
        cv = max(r["metrics"].get(f"{k}_cv", 0.0) for k in ("ttft_ms", "ms_per_token", "decode_tok_s", "prefill_tok_s"))
        spread = f"{cv:.0%} noisy" if cv > SPREAD_WARN_CV else f"{cv:.0%}"
        runs = r.get("latency_runs", 1)  # a timing line failed: the least disturbed of these runs is shown
        cells.append(spread + (f", best of {runs}" if runs > 1 else ""))
        mark = "PASS" if r["pass"] else f"FAIL {_first_failure(r)}"
        if data["recommended"] and r["artifact"] == data["recommended"]["artifact"]:
            mark += " <- recommended"
        rows.append(cells + [mark])
    return header, rows


def importance_footnote(data: dict) -> str | None:
    """The line that explains the table's starred levels, when any."""
    weighed = next((r["importance"] for r in data["rows"] if r.get("importance")), None)
    if weighed is None:
        return None
    gptq = sorted({r["target"] for r in data["rows"] if (r.get("importance") or {}).get("second_moments")})
    return (f"* rounded with an importance matrix: each weight's inputs, mean square over {weighed['tokens']:,} tokens of "
            f"{weighed['text']}, as `edgeft build` rounds these levels"
            + (f"; {', '.join(gptq)}'s then rounded again by GPTQ under those inputs' second moments ([gguf] gptq)" if gptq else ""))


def own_file_footnotes(data: dict) -> list[str]:
    """One line per model and backend whose levels were read against the model's own file in that
    backend's runtime: what that file answers, the floor under every level's answer line."""
    from edgeft.bench.report import pct

    lines, seen = [], set()
    for r in data["rows"]:
        m = r["metrics"]
        if not r.get("source_file") or "answer_source_file_ppl_vs_source_pct" not in m or (r["model"], r["backend"]) in seen:
            continue
        seen.add((r["model"], r["backend"]))
        lines.append(f"the source's own file ({Path(r['source_file']).name}) through the {r['backend']} runtime: worst answer "
                     f"{pct(m['answer_source_file_ppl_vs_source_pct'])}, mean {pct(m['answer_source_file_ppl_vs_source_mean_pct'])}"
                     " (each level's answers against it: compare.json, metrics.answers_no_worse_than_source_file)")
    return lines


def markdown(data: dict) -> str:
    header, rows = table_rows(data)
    refs = ", ".join(f"{b}: `{p}`" for b, p in data.get("references", {}).items()) or f"`{data['reference']}`"
    lines = [f"# edgeft compare: {data['model']}", "",
             f"{COLUMN_NOTE} ({refs}). "
             f"Machine: {data['rows'][0]['machine']['cpu']}, {data['rows'][0]['machine']['threads']} threads." if data["rows"] else "",
             "", "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    footnote, floors = importance_footnote(data), own_file_footnotes(data)
    lines += [*(["", footnote.replace("*", "\\*", 1)] if footnote else []), *(["", *floors] if floors else []),
              "", f"**{data['verdict']}**", ""]
    return "\n".join(lines)
