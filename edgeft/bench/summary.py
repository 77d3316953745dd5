"""Reports for CI: a Markdown section (for a job summary) and a JUnit XML file (one test case per check)."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

from edgeft.atomic_io import write_text
from edgeft.bench.report import own_file_summary, own_file_verdict, parting_line


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def markdown(result: dict, gate: list[dict] | None = None) -> str:
    """One section: verdict, key metrics, budget lines and (when gated) the baseline comparison."""
    m = result["metrics"]
    verdict = "PASS" if result["pass"] and (gate is None or all(g["status"] == "PASS" for g in gate)) else "FAIL"
    t = result["target"]
    lines = [f"### edgeft bench: `{Path(result['artifact']['path']).name}` ({t['backend']} {t['quant']}) — {verdict}", ""]
    if m.get("ppl_vs_source_pct") is not None:
        lines += [f"Against the source model: perplexity {_cell(m['source_ppl'])} → {_cell(m['ppl'])} "
                  f"({m['ppl_vs_source_pct']:+.1f}%), KL mean {_cell(m['kl_vs_source_mean'])}, "
                  f"top-1 agreement {_cell(m['top1_vs_source_pct'])}%", ""]
    else:
        lines += ["Against the source model: not measured; " + ("ppl_increase_pct below is quantization loss alone."
                  if m.get("ppl_increase_pct") is not None else "the perplexity below is the artifact's own, compared with nothing."), ""]
    for row in result.get("answers") or []:
        lines += [f"> **{row['prompt']}**  ", f"> source: {' '.join(row['source'].split())}  ",
                  f"> artifact: {' '.join(row['artifact'].split())}" + ("  " if row.get("parts_at") is not None else "")]
        if row.get("parts_at") is not None:
            lines.append(f"> {parting_line(row)}")
        if "source_file" in row:
            lines[-1] += "  "
            lines.append(f"> source's own file: {' '.join(row['source_file'].split())} {own_file_verdict(row)}")
        lines.append("")
    if m.get("answer_source_file_ppl_vs_source_pct") is not None:
        floor = own_file_summary(m)
        lines += [floor[0].upper() + floor[1:] + ".", ""]
    lines += ["| metric | median | p90 | spread |", "| --- | ---: | ---: | ---: |"]
    for key in ("ttft_ms", "ms_per_token", "decode_tok_s", "prefill_tok_s"):
        lines.append(f"| {key} | {_cell(m.get(f'{key}_p50'))} | {_cell(m.get(f'{key}_p90'))} | {m.get(f'{key}_cv', 0):.0%} |")
    for key in ("peak_rss_mb", "package_mb", "model_mb", "ppl", "ppl_increase_pct", "kl_mean", "kl_p99", "top1_agree_pct",
                "source_ppl", "ppl_vs_source_pct", "kl_vs_source_mean", "kl_vs_source_p99", "top1_vs_source_pct",
                "answer_ppl_vs_source_pct", "answer_ppl_vs_source_mean_pct", "answers_same"):
        if m.get(key) is not None:
            lines.append(f"| {key} | {_cell(m[key])} | | |")
    if result["budget"]:
        lines += ["", "| budget | value | limit | result |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {b['budget']} | {_cell(b['value'])} | {_cell(b['limit'])} | {b['status']} |" for b in result["budget"]]
    if gate:
        lines += ["", "| metric (vs baseline) | baseline | now | change | tolerance | result |", "| --- | ---: | ---: | ---: | ---: | --- |"]
        lines += [f"| {g['metric']} | {_cell(g['old'])} | {_cell(g['new'])} | {g['change_pct']:+.1f}% | {g['tolerance_pct']:g}% | {g['status']} |"
                  for g in gate]
    return "\n".join(lines) + "\n\n"


def append_markdown(path: Path, text: str) -> None:
    """Append, as CI job summaries expect; the whole file is rewritten atomically so a reader never sees half a section."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, old + text)


def junit(result: dict, gate: list[dict] | None = None) -> str:
    """Each budget line and each gated metric as a test case; a FAIL is a <failure>."""
    name = Path(result["artifact"]["path"]).name
    cases = []
    for b in result["budget"]:
        msg = f"{b['budget']} = {_cell(b['value'])}, limit {_cell(b['limit'])}"
        if b["status"] == "NOT MEASURED":
            msg = f"{b['budget']}: not measured (limit {_cell(b['limit'])})"
        cases.append((f"budget.{b['budget']}", b["status"], msg))
    for g in gate or []:
        msg = f"{g['metric']}: {_cell(g['old'])} -> {_cell(g['new'])} ({g['change_pct']:+.1f}%, tolerance {g['tolerance_pct']:g}%)"
        cases.append((f"regression.{g['metric']}", g["status"], msg))
    failures = sum(1 for _, status, _ in cases if status == "FAIL")
    skipped = sum(1 for _, status, _ in cases if status == "NOT MEASURED")
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name={quoteattr("edgeft bench " + name)} tests="{len(cases)}" failures="{failures}" skipped="{skipped}">']
    for case, status, msg in cases:
        if status == "FAIL":
            out.append(f"  <testcase classname=\"edgeft.bench\" name={quoteattr(case)}><failure message={quoteattr(msg)}/></testcase>")
        elif status == "NOT MEASURED":  # neither passed nor failed: a CI report shows it as skipped
            out.append(f"  <testcase classname=\"edgeft.bench\" name={quoteattr(case)}><skipped message={quoteattr(msg)}/></testcase>")
        else:
            out.append(f"  <testcase classname=\"edgeft.bench\" name={quoteattr(case)}><system-out>{quoteattr(msg)[1:-1]}</system-out></testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


def _against_cases(result: dict) -> list[tuple[str, str, str]]:
    """(name, status, message) for every timing verdict and every once-per-side metric."""
    cases = []
    for v in result["verdicts"]:
        msg = (f"{v['metric']}: median ratio {v['median_ratio']:.3f} (95% CI {v['ci_low']:.3f}-{v['ci_high']:.3f}) over "
               f"{v['rounds']} paired rounds, limit {1 + v['tolerance_pct'] / 100:.3f}")
        if v["status"] == "INCONCLUSIVE":
            msg += f"; about {v['rounds_to_decide'] or 'many more'} rounds would settle it"
        cases.append((f"against.{v['metric']}", v["status"], msg))
    for s in result["static"]:
        cases.append((f"against.{s['metric']}", s["status"],
                      f"{s['metric']}: {_cell(s['old'])} -> {_cell(s['new'])} ({s['change_pct']:+.1f}%, tolerance {s['tolerance_pct']:g}%)"))
    return cases


def shown(path: str | Path) -> str:
    """A path as a report names it: relative to the working folder when under it, else whole. Why not
    the file name: a CI job gates `new/model-q4_k_m.gguf` against `old/model-q4_k_m.gguf`."""
    import os

    rel = os.path.relpath(Path(path).absolute())
    return str(Path(path).absolute()) if rel.startswith("..") else rel


def against_markdown(result: dict) -> str:
    """The A/B gate as a CI job-summary section: the verdict, then every ratio with its interval."""
    old, new = shown(result["old"]["path"]), shown(result["new"]["path"])
    lines = [f"### edgeft bench: new `{new}` against old `{old}`: {result['verdict']}", "",
             f"{len(result['rounds'])} interleaved rounds (A = old `{old}`, B = new `{new}`), {result['method']['interval']}; "
             "ratio new/old > 1 is worse.", "",
             "| metric | median ratio | 95% CI | limit | verdict |", "| --- | ---: | ---: | ---: | --- |"]
    for v in result["verdicts"]:
        mark = v["status"] + (f" (~{v['rounds_to_decide']} rounds to settle)" if v["status"] == "INCONCLUSIVE" and v["rounds_to_decide"] else "")
        lines.append(f"| {v['metric']} | {v['median_ratio']:.3f} | {v['ci_low']:.3f} – {v['ci_high']:.3f} | "
                     f"{1 + v['tolerance_pct'] / 100:.3f} | {mark} |")
    for s in result["static"]:
        lines.append(f"| {s['metric']} (once per side) | {s['new'] / s['old'] if s['old'] else float('nan'):.3f} | | "
                     f"{1 + s['tolerance_pct'] / 100:.3f} | {s['status']} |")
    return "\n".join(lines) + "\n\n"


def against_junit(result: dict) -> str:
    cases = _against_cases(result)
    failures = sum(1 for _, status, _ in cases if status == "FAIL")
    skipped = sum(1 for _, status, _ in cases if status == "INCONCLUSIVE")
    name = f"edgeft bench: new {shown(result['new']['path'])} against old {shown(result['old']['path'])}"
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name={quoteattr(name)} tests="{len(cases)}" failures="{failures}" skipped="{skipped}">']
    for case, status, msg in cases:
        body = {"FAIL": f"<failure message={quoteattr(msg)}/>", "INCONCLUSIVE": f"<skipped message={quoteattr(msg)}/>"}.get(
            status, f"<system-out>{quoteattr(msg)[1:-1]}</system-out>")
        out.append(f'  <testcase classname="edgeft.bench.against" name={quoteattr(case)}>{body}</testcase>')
    out.append("</testsuite>")
    return "\n".join(out) + "\n"
