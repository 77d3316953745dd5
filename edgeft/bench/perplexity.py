"""Quality of an artifact: perplexity on an evaluation text and, against the unquantized
reference (quantization loss alone) and against the source model the user gave (everything the
build did), the perplexity increase, per-token KL divergence and top-1 agreement.

Everything goes through the Runner interface (`logits`, `tokenize`), so every backend is
measured the same way. Runs inside a worker process (see worker.py), never in the harness.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.errors import EdgeftError

if TYPE_CHECKING:
    import numpy as np


def read_eval_data(path: Path) -> list[int]:
    """Token ids of a held-out split: JSONL, one object per line with `input_ids` (a list of ints).

    Rows the data stage padded carry an `attention_mask`; padding is not text and is not scored."""
    if not path.is_file():
        raise EdgeftError("no such file", file=path)
    ids: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EdgeftError(f"not valid JSON ({exc.msg})", file=path, place=f"line {lineno}") from None
            row = record.get("input_ids") if isinstance(record, dict) else None
            if not isinstance(row, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in row):
                raise EdgeftError("expected an object with `input_ids`, a list of non-negative integers",
                                  file=path, place=f"line {lineno}")
            mask = record.get("attention_mask")
            if isinstance(mask, list) and len(mask) == len(row):
                row = [t for t, m in zip(row, mask) if m]
            ids.extend(row)
    if len(ids) < 2:
        raise EdgeftError(f"only {len(ids)} evaluation tokens; at least 2 are needed", file=path)
    return ids


def eval_ids(tokenize, eval_data: Path | None, limit: int) -> tuple[list[int], str]:
    """The tokens every level is scored on: the build's held-out split, else the shipped text."""
    if eval_data is not None:
        ids, source = read_eval_data(eval_data), str(eval_data)
    else:
        from edgeft.bench.prompt import eval_text

        ids, source = tokenize(eval_text()), "edgeft/assets/eval.txt"
    return ids[:limit], source


def windows(ids: list[int], window: int) -> list[list[int]]:
    """Non-overlapping windows of `window` tokens; a last window of one token predicts nothing and is dropped."""
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    return [c for c in chunks if len(c) >= 2]


def log_softmax(logits: "np.ndarray") -> "np.ndarray":
    import numpy as np

    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _Against:
    """Running sums of one comparison: the artifact against a reference or against the source."""

    def __init__(self, runner):
        self.runner = runner
        self.nll: list[float] = []
        self.kl: list[float] = []
        self.agree = 0

    def add(self, chunk: list[int], targets: "np.ndarray", lp: "np.ndarray") -> None:
        import numpy as np

        other = log_softmax(self.runner.logits(chunk)[:-1])
        if other.shape != lp.shape:
            raise EdgeftError(f"the model compared with has {other.shape[1]} vocabulary entries, the artifact {lp.shape[1]}; "
                              "they are not the same model")
        self.nll.extend((-other[np.arange(len(targets)), targets]).tolist())
        self.kl.extend((np.exp(other) * (other - lp)).sum(axis=-1).clip(min=0.0).tolist())  # [len-1]
        self.agree += int((other.argmax(axis=-1) == lp.argmax(axis=-1)).sum())

    def summary(self, ppl: float) -> tuple[float, float, float, float, float]:
        import numpy as np

        other_ppl = math.exp(float(np.mean(self.nll)))
        return (other_ppl, (ppl / other_ppl - 1.0) * 100.0, float(np.mean(self.kl)), float(np.percentile(self.kl, 99)),
                100.0 * self.agree / len(self.kl))


def score(runner, ids: list[int], window: int, reference=None, source=None) -> dict:
    """Perplexity of `runner` on `ids`. Against `reference` (its own unquantized export: quantization loss
    alone) and against `source` (the model the user gave: everything the build did to it), each also
    KL(other || runner) per token, top-1 agreement and the other's own perplexity. Each window's first
    token is context only; the artifact's logits are computed once per window for both comparisons."""
    import numpy as np

    nll: list[float] = []
    chunks = windows(ids, window)
    if not chunks:
        raise EdgeftError(f"{len(ids)} evaluation tokens are too few to score")
    against = {name: _Against(r) for name, r in (("reference", reference), ("source", source)) if r is not None}
    for chunk in chunks:
        targets = np.asarray(chunk[1:])
        lp = log_softmax(runner.logits(chunk)[:-1])  # [len-1, vocab]: position i predicts chunk[i+1]
        nll.extend((-lp[np.arange(len(targets)), targets]).tolist())
        for comparison in against.values():
            comparison.add(chunk, targets, lp)
    ppl = math.exp(float(np.mean(nll)))
    result: dict = {"ppl": ppl, "tokens_scored": len(nll), "windows": len(chunks)}
    if "reference" in against:
        ref_ppl, increase, kl_mean, kl_p99, top1 = against["reference"].summary(ppl)
        result.update(ref_ppl=ref_ppl, ppl_increase_pct=increase, kl_mean=kl_mean, kl_p99=kl_p99, top1_agree_pct=top1)
    if "source" in against:
        src_ppl, increase, kl_mean, kl_p99, top1 = against["source"].summary(ppl)
        result.update(source_ppl=src_ppl, ppl_vs_source_pct=increase, kl_vs_source_mean=kl_mean,
                      kl_vs_source_p99=kl_p99, top1_vs_source_pct=top1)
        if getattr(source, "kept", None) is not None:
            # A trimmed artifact splits words the kept vocabulary lacks into more pieces, and the source fed
            # those pieces suffers too, so the same-ids perplexity hides the cost. Compared instead: the
            # same text, the source on its own tokens; the artifact's total NLL over the source's token count.
            own_total, own_count = source.own_nll(ids, window)
            result.update(source_ppl=math.exp(own_total / own_count),
                          ppl_vs_source_pct=(math.exp((float(np.sum(nll)) - own_total) / own_count) - 1.0) * 100.0,
                          ppl_vs_source_same_ids_pct=increase, source_tokens_scored=own_count)
    return result


def ids_digest(ids: list[int]) -> str:
    """A fingerprint of the scored tokens, so two bench files can show they used the same text."""
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()
