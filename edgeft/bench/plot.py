"""compare.png: quality loss and latency against package size, budgets drawn, the pick marked."""

from __future__ import annotations

from pathlib import Path

from edgeft.atomic_io import atomic_path

_MARKERS = ["o", "s", "^", "D", "v"]
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def compare_plot(data: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never a window from a CLI
    import matplotlib.pyplot as plt

    from edgeft.bench.compare import series

    rows = data["rows"]
    backends = list(dict.fromkeys(series(r, data) for r in rows))
    budgets: dict = {}
    for b in data.get("budget", {}).values():
        budgets.update(b)
    def measured(key: str) -> bool:
        return any(r["metrics"].get(key) is not None for r in rows)

    # Quality against the source, the budget's measure, where it was measured; else quantization loss alone,
    # labelled so; else the perplexity itself.
    if measured("ppl_vs_source_pct"):
        quality = ("ppl_vs_source_pct", "perplexity increase vs the source (%)", "ppl_vs_source_pct")
    elif measured("ppl_increase_pct"):
        quality = ("ppl_increase_pct", "perplexity increase vs its own unquantized export (%)", "ppl_increase_pct")
    else:
        quality = ("ppl", "perplexity", None)
    answers = measured("answer_ppl_vs_source_pct")
    fig, axes = plt.subplots(1, 3 if answers else 2, figsize=(16 if answers else 11, 4.6), constrained_layout=True)
    ax_q, ax_t = axes[0], axes[-1]
    panels = [(ax_q, *quality)]
    if answers:
        panels.append((axes[1], "answer_ppl_vs_source_pct", "worst fixed-prompt answer vs the source (%)",
                       "answer_ppl_vs_source_pct"))
        axes[1].set_title("answers: lower is better")
    panels.append((ax_t, "ttft_ms_p90", "time to first token, p90 (ms)", "ttft_ms_p90"))
    recommended = (data.get("recommended") or {}).get("artifact")
    for ax, key, label, budget_key in panels:
        for i, backend in enumerate(backends):
            pts = [r for r in rows if series(r, data) == backend and r["metrics"].get(key) is not None]
            xs = [r["metrics"]["package_mb"] for r in pts]
            ys = [r["metrics"][key] for r in pts]
            ax.scatter(xs, ys, s=60, marker=_MARKERS[i % len(_MARKERS)], color=_COLORS[i % len(_COLORS)],
                       label=backend, zorder=3)
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(r["quant"], (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9)
                if r["artifact"] == recommended:
                    ax.scatter([x], [y], s=320, facecolors="none", edgecolors="#2ca02c", linewidths=2.2, zorder=4,
                               label="recommended")
        all_x = [r["metrics"]["package_mb"] for r in rows]
        all_y = [r["metrics"][key] for r in rows if r["metrics"].get(key) is not None]
        notes = []
        # A budget far beyond every point would squash the points into a corner: draw it only when
        # it is near the data, otherwise say in words that every level is under it.
        if budget_key and budgets.get(budget_key) is not None:
            limit = budgets[budget_key]
            if all_y and limit > 2 * max(max(all_y), 1e-9):
                notes.append(f"{budget_key} budget {limit:g}: all levels far below")
            else:
                ax.axhline(limit, color="#d62728", linestyle="--", linewidth=1.2, label=f"{budget_key} budget {limit:g}")
        if budgets.get("package_mb") is not None:
            limit = budgets["package_mb"]
            if all_x and limit > 2 * max(all_x):
                notes.append(f"size budget {limit:g} MB: all levels far below")
            else:
                ax.axvline(limit, color="#7f7f7f", linestyle=":", linewidth=1.2, label=f"size budget {limit:g} MB")
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=8, color="#555555", va="bottom")
        ax.set_xlabel("package size (MB)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15, y=0.15)
        ax.legend(fontsize=8, loc="best", markerscale=0.6, framealpha=0.8)
    ax_q.set_title("quality loss: lower is better")
    ax_t.set_title("latency: lower is better")
    pick = (data.get("recommended") or {})
    title = " vs ".join(Path(str(m)).name for m in data.get("models") or [data["model"]])
    fig.suptitle(f"{title}: " + (f"pick {series(pick, data)} {pick['quant']}" if pick else data["verdict"]),
                 fontsize=12)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def against_plot(result: dict, out: Path) -> Path:
    """One panel per timing metric: each round's paired ratio, the median and its interval, and the
    tolerance band (ratios above the band's top are worse than allowed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verdicts = result["verdicts"]
    fig, axes = plt.subplots(1, len(verdicts), figsize=(3.2 * len(verdicts), 3.6), constrained_layout=True, squeeze=False)
    colors = {"PASS": "#2ca02c", "FAIL": "#d62728", "INCONCLUSIVE": "#ff7f0e"}
    for ax, v in zip(axes[0], verdicts):
        ratios = [r["ratios"][v["metric"]] for r in result["rounds"]]
        limit = 1 + v["tolerance_pct"] / 100
        ax.axhspan(0, limit, color="#e8f5e9", zorder=0)
        ax.axhline(1.0, color="#888", lw=0.8)
        ax.axhline(limit, color="#d62728", lw=1, ls="--", label=f"limit {limit:.2f}")
        ax.plot(range(1, len(ratios) + 1), ratios, "o", ms=3.5, color="#1f77b4", label="round ratio")
        ax.errorbar([len(ratios) + 1.5], [v["median_ratio"]], yerr=[[v["median_ratio"] - v["ci_low"]], [v["ci_high"] - v["median_ratio"]]],
                    fmt="s", color=colors[v["status"]], capsize=4, label="median, 95% CI")
        ax.set_title(f"{v['metric']}: {v['status']}", fontsize=9)
        ax.set_xlabel("round")
        lo = min(min(ratios), v["ci_low"], 1.0)
        hi = max(max(ratios), v["ci_high"], limit)
        ax.set_ylim(lo - 0.05 * (hi - lo + 0.01), hi + 0.1 * (hi - lo + 0.01))
    axes[0][0].set_ylabel("new vs old (> 1 is worse)")
    axes[0][0].legend(fontsize=7, loc="best")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
