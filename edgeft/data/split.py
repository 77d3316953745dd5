"""A deterministic train/eval split by content hash: a record's side depends only on its own
input text, so adding records never moves existing ones across the split."""

from __future__ import annotations

import hashlib


def is_eval(input_text: str, eval_fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}\x00{input_text.casefold()}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction
