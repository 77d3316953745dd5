"""Held-out quality: perplexity on target tokens, top-1 agreement with the teacher; CSV and PNG."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.atomic_io import atomic_path, write_text
from edgeft.distill.logits import target_logits
from edgeft.distill.records import IGNORE, Record, collate

if TYPE_CHECKING:
    import torch


@dataclass
class EvalResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per target token
    tokens: int
    top1: "torch.Tensor"  # [tokens] the model's argmax at every target position, in record order
    agreement: float | None = None  # share of positions where top1 equals the teacher's

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "nll": self.nll, "tokens": self.tokens, "top1_agreement": self.agreement}


def evaluate(model, records: Sequence[Record], pad_id: int, batch_size: int, teacher_top1: "torch.Tensor | None" = None,
             embeds: "Sequence[torch.Tensor] | None" = None) -> EvalResult:
    """Run `model` (no grad, eval mode; a 4-bit base must have repacking disabled) over `records`.
    `embeds[i]`, when given, is the decoder's input for batch i instead of its token ids."""
    import torch

    was_training = model.training
    model.eval()
    nll_sum, n, tops = 0.0, 0, []
    try:
        with torch.no_grad():
            for i, start in enumerate(range(0, len(records), batch_size)):
                batch = collate(records[start:start + batch_size], pad_id)
                sel = batch["targets"] != IGNORE
                picked = target_logits(model, batch, inputs_embeds=embeds[i] if embeds else None)[0].float()  # [n, vocab]
                tgt = batch["targets"][sel]
                nll_sum += float(torch.nn.functional.cross_entropy(picked, tgt, reduction="sum"))
                n += int(tgt.numel())
                tops.append(picked.argmax(-1))
    finally:
        model.train(was_training)
    top1 = torch.cat(tops)
    nll = nll_sum / max(n, 1)
    agreement = float((top1 == teacher_top1).float().mean()) if teacher_top1 is not None else None
    return EvalResult(perplexity=math.exp(min(nll, 80.0)), nll=nll, tokens=n, top1=top1, agreement=agreement)


def write_csv(path: Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())
    return path


def plot_curve(path: Path, log: list[dict], evals: dict[str, dict]) -> Path:
    """Training loss (total, KD, CE) per step, with the eval perplexities in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in log]
    for key in ("loss", "kd", "ce"):
        ax.plot(steps, [r[key] for r in log], label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    parts = [f"{name}: ppl {e['perplexity']:.2f}" + (f", top-1 {e['top1_agreement']:.1%}" if e.get("top1_agreement") is not None else "")
             for name, e in evals.items()]
    ax.set_title("\n".join(parts), fontsize=8)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
