"""Tables for people: the metrics and the budget verdicts of one bench result."""

from __future__ import annotations

from pathlib import Path

SPREAD_WARN_CV = 0.10  # above this run-to-run spread, medians are not trustworthy

_ROWS = [
    ("time to first token", "ttft_ms", "ms"),
    ("time per token", "ms_per_token", "ms"),
    ("decode speed", "decode_tok_s", "tok/s"),
    ("prefill speed", "prefill_tok_s", "tok/s"),
]


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def pct(value: float) -> str:
    """A signed percentage: whole numbers, but a tenth below 1 so that a small change is not "-0 %"."""
    return f"{value:+.1f} %" if abs(value) < 1 else f"{value:+.0f} %"


def budget_verdict(result: dict) -> str:
    """The last line: PASS or FAIL, and which lines could not be measured (they neither pass nor fail)."""
    unmeasured = [b["budget"] for b in result.get("budget", []) if b["status"] == "NOT MEASURED"]
    head = "budget: PASS" if result["pass"] else "budget: FAIL"
    if unmeasured:
        head += f" ({len(unmeasured)} line{'s' if len(unmeasured) > 1 else ''} not measured: {', '.join(unmeasured)})"
    return head


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def metrics_table(result: dict) -> str:
    m = result["metrics"]
    rows = []
    for label, key, unit in _ROWS:
        cv = m.get(f"{key}_cv", 0.0)
        note = (f"spread {cv:.0%}: noisy, add runs ([bench] runs in a profile)" if cv > SPREAD_WARN_CV
                else f"spread {cv:.0%}")
        if unit == "tok/s":  # a speed's 90th percentile is its fast end, a time's its slow end
            note += "; p90 is the fast end"
        rows.append([label, _fmt(m.get(f"{key}_p50"), unit), _fmt(m.get(f"{key}_p90"), unit), note])
    rows.append(["peak memory (RSS)", _fmt(m.get("peak_rss_mb"), "MB"), "", f"model share {_fmt(m.get('model_rss_mb'), 'MB')}"])
    rows.append(["package size", _fmt(m.get("package_mb"), "MB"), "", f"model file {_fmt(m.get('model_mb'), 'MB')}"])
    if m.get("ppl") is not None:
        note = f"{result['eval']['tokens_scored']} tokens of {result['eval']['source']}" if result.get("eval") else ""
        rows.append(["perplexity", _fmt(m["ppl"]), "", note])
    if m.get("ppl_increase_pct") is not None:
        rows.append(["vs unquantized export", f"{m['ppl_increase_pct']:+.2f} % ppl", "",
                     f"quantization loss alone: KL mean {m['kl_mean']:.4f} p99 {m['kl_p99']:.4f}, "
                     f"top-1 agree {m['top1_agree_pct']:.1f} %"])
    return table(rows, ["metric", "median", "p90", "notes"])


def latency_note(result: dict) -> str:
    """One line when the latency was measured more than once (`run.settled_latency`): which run the
    table shows and what each measured, so a PASS after a failed run is not a surprise."""
    tries = result.get("latency_tries") or []
    if len(tries) < 2:
        return ""
    each = ", ".join(f"{t['ttft_ms_p90']:.0f} ms" + ("" if t["others_cores"] is None else f" ({t['others_cores']:.1f} cores busy)")
                     + (" <- shown" if t["kept"] else "") for t in tries)
    return (f"latency measured {len(tries)} times, as a timing line failed (load only adds time; the least "
            f"disturbed run is shown): TTFT p90 {each}")


def source_quality(result: dict) -> str:
    """The first lines of every report: the artifact against the model the user gave."""
    m = result["metrics"]
    if m.get("ppl_vs_source_pct") is None:
        below = ("the 'vs unquantized export' row below is quantization loss alone" if m.get("ppl_increase_pct") is not None
                 else "the perplexity below is the artifact's own, compared with nothing (`--reference FILE`: against its "
                      "unquantized export, quantization loss alone)")
        return ("quality against the source: not measured (give the model it was built from: `--source HF_FOLDER`); "
                + below)
    ev = result.get("eval") or {}
    head = (f"quality against the source ({ev.get('source_model', 'the model you gave')}), {ev.get('tokens_scored', '?')} "
            f"tokens of {ev.get('source', '?')}:\n")
    kl = (f"KL mean {m['kl_vs_source_mean']:.4f} p99 {m['kl_vs_source_p99']:.4f}, "
          f"top-1 agreement {m['top1_vs_source_pct']:.1f} %")
    if m.get("ppl_vs_source_same_ids_pct") is not None:  # trimmed: the text's likelihood, each model on its own tokens
        return (head + f"  the same text: {m['ppl_vs_source_pct']:+.1f} % perplexity (per source token; the source on its "
                f"own {m['source_tokens_scored']} tokens, perplexity {_fmt(m['source_ppl'])})\n"
                f"  on the artifact's tokens: perplexity {m['ppl_vs_source_same_ids_pct']:+.1f} %, {kl}")
    return head + f"  perplexity {_fmt(m['source_ppl'])} -> {_fmt(m['ppl'])} ({m['ppl_vs_source_pct']:+.1f} %), {kl}"


def answers_block(result: dict, width: int = 100) -> str:
    """Greedy answers of the source and of the shipped file to the fixed chat prompts, one under the other."""
    rows = result.get("answers")
    if not rows:
        return ""

    def cut(text: str) -> str:
        text = " ".join(text.split()) or "(nothing)"
        return text if len(text) <= width else text[: width - 3] + "..."

    m = result.get("metrics", {})
    # A model without a chat template (a base model, like the embedded Gemma 3 270M) is given the prompts
    # bare: what it writes continues the text, and is no answer (absent in a bench.json from before).
    how = "chat template" if rows[0].get("chat_template", True) else \
        "bare prompts: the model has no chat template, so it continues each prompt's text rather than answering it"
    own = (result.get("eval") or {}).get("source_file") if all("source_file" in r for r in rows) else None
    lines = [f"answers (greedy, {how}): the source model, then the shipped file, "
             + (f"then the source's own file ({Path(own).name}) in the same runtime, " if own else "")
             + "with how much more perplexing the source finds each answer than its own"]
    for row in rows:
        lines.append(f"  > {row['prompt']}")
        lines.append(f"    source:   {cut(row['source'])}")
        increase = row.get("ppl_vs_source_pct")  # absent in a bench.json from before answers were scored
        verdict = "(same)" if row["same"] else "" if increase is None else f"({pct(increase)} to the source)"
        lines.append(f"    artifact: {cut(row['artifact'])}  {verdict}")
        if row.get("parts_at") is not None:  # absent in a bench.json from before partings were read
            lines.append("    " + parting_line(row))
        if own:
            lines.append(f"    src file: {cut(row['source_file'])}  " + own_file_verdict(row))
    if m.get("answer_ppl_vs_source_pct") is not None:
        ties = sum(bool(r.get("near_tie")) for r in rows)
        tie_note = f"; {ties} part where the source itself is near a tie" if ties else ""
        lines.append(f"  {m['answers_same']} of {m['answers_total']} answers the same{tie_note}; worst answer "
                     f"{pct(m['answer_ppl_vs_source_pct'])}, mean {pct(m['answer_ppl_vs_source_mean_pct'])} "
                     "(budget key answer_ppl_vs_source_pct: the worst)")
    if own and m.get("answer_source_file_ppl_vs_source_pct") is not None:
        lines.append("  " + own_file_summary(m))
    return "\n".join(lines)


def own_file_verdict(row: dict) -> str:
    """The source's own file's answer against the source's, as the shipped file's is shown."""
    return "(same as the source)" if row["source_file_same"] else f"({pct(row['source_file_ppl_vs_source_pct'])} to the source)"


def own_file_summary(m: dict) -> str:
    """The answer line's floor: what the model you gave scores with nothing of ours in between."""
    return (f"the source's own file in this runtime: worst answer {pct(m['answer_source_file_ppl_vs_source_pct'])}, mean "
            f"{pct(m['answer_source_file_ppl_vs_source_mean_pct'])}; the shipped file's answer is no further from the "
            f"source's than its own file's on {m['answers_no_worse_than_source_file']} of {m['answers_total']} prompts")


def parting_line(row: dict) -> str:
    """Where the shipped file's answer leaves the source's, and how sure the source was of its own token
    there: a near-tie is the source's own doubt, a token it gives little is the artifact's doing."""
    own, art = row["source_p_own"], row["source_p_artifact"]
    head = (f"parts at token {row['parts_at'] + 1}: the source gives its {row['source_token']!r} {probability(own)}, "
            f"the shipped file's {row['artifact_token']!r} {probability(art)}")
    return head + (": a near-tie of the source's own" if row.get("near_tie") else "")


def probability(p: float) -> str:
    """A probability in percent, with the digits a small one needs to show at all."""
    value = p * 100.0
    if value >= 10:
        return f"{value:.0f} %"
    if value >= 1:
        return f"{value:.1f} %"
    return f"{value:.2g} %"



def gate_table(lines: list[dict]) -> str:
    """Old, new and change in percent per gated metric (GateLine.to_json() dicts)."""
    rows = [[g["metric"], f"{g['better']} is better", _fmt(g["old"]), _fmt(g["new"]), f"{g['change_pct']:+.1f} %",
             f"{g['tolerance_pct']:g} %", g["status"]] for g in lines]
    return table(rows, ["metric", "direction", "baseline", "now", "change", "tolerance", "result"])


def budget_table(result: dict) -> str:
    rows = [[b["budget"], _fmt(b["value"]), _fmt(b["limit"]), b["status"]] for b in result["budget"]]
    if not rows:
        return "no budget set in the target profile"
    return table(rows, ["budget", "value", "limit", "result"])


def student_table(student: dict) -> str:
    """`--student auto`'s candidates: what each measured, which budget line stopped it, the choice and why."""
    if "candidates" not in student:
        return f"student: {student.get('reason', '')}"
    rows = []
    skipped = [str(c["layers"]) for c in student["candidates"] if c.get("measured") is False]
    for c in student["candidates"]:
        if c.get("measured") is False:
            continue
        verdict = "fits" if c["fits"] else "fails " + ", ".join(c["fails"])
        if c.get("tries", 1) > 1:
            verdict += f" (best of {c['tries']} benches)"
        mark = " <- chosen" if c["layers"] == student["layers"] else ""
        rows.append([str(c["layers"]), _fmt(c["parameters"] / 1e6, "M"), _fmt(c["package_mb"], "MB"),
                     _fmt(c["ttft_ms_p90"], "ms"), _fmt(c["ms_per_token_p90"], "ms"), _fmt(c["peak_rss_mb"], "MB"),
                     verdict + mark])
    if skipped:
        rows.append([", ".join(skipped), "", "", "", "", "", "not measured: a larger one fits"])
    head = f"student ({student['mode']}): {student['reason']}"
    return head + "\n" + table(rows, ["layers", "params", "package", "ttft p90", "ms/token p90", "peak RSS", "budget"])
