"""Prepared-data files for distillation tests, written the way the data stage writes them."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import CORPUS


def write_prepared(folder: Path, tok_dir: Path, *, n_train: int = 24, n_eval: int = 8, prompt_len: int = 4, pad_to: int = 0) -> Path:
    """train.jsonl/eval.jsonl from the tiny corpus: the first `prompt_len` tokens are the prompt
    (labels -100), the rest are targets; `pad_to` right-pads with masked padding like the data stage."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    texts = list(dict.fromkeys(CORPUS))
    rows = []
    for i in range(n_train + n_eval):
        ids = tok(texts[i % len(texts)] + " " + texts[(i * 3 + 1) % len(texts)])["input_ids"][:48]
        labels = [-100] * prompt_len + ids[prompt_len:]
        mask = [1] * len(ids)
        if pad_to > len(ids):
            extra = pad_to - len(ids)
            ids, labels, mask = ids + [tok.pad_token_id] * extra, labels + [-100] * extra, mask + [0] * extra
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return folder
