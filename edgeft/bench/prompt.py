"""The fixed text benchmarks use: a prompt of an exact token count, the same for every level compared."""

from __future__ import annotations

from importlib import resources


def eval_text() -> str:
    return resources.files("edgeft.assets").joinpath("eval.txt").read_text(encoding="utf-8")


def prompt_ids(tokenize, n_tokens: int) -> list[int]:
    """The first `n_tokens` tokens of the shipped text (repeated if the text is shorter)."""
    ids = tokenize(eval_text())
    if not ids:
        raise ValueError("the tokenizer produced no tokens for the evaluation text")
    while len(ids) < n_tokens:
        ids = ids + ids
    return ids[:n_tokens]
