"""Greedy answers of a transformers model to many prompts at once, and where an answer ends.

Two callers want the same thing: the distill stage (the student's own answers to its training
prompts) and the bench (the source's answers to the fixed chat prompts). Generated one prompt at a
time, a small model on a CPU spends most of each token reading its weights; batched, those reads
serve every prompt in the batch."""

from __future__ import annotations

from typing import Callable, Sequence


def until_stop(tokens: Sequence[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """The answer up to and including its first end-of-turn id, and whether it had one."""
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return list(tokens[: i + 1]), True
    return list(tokens), False


def greedy_answers(model, prompts: Sequence[Sequence[int]], *, new_tokens: int, stop_ids: set[int], pad_id: int,
                   batch_size: int, on_batch: Callable[[int], None] | None = None) -> list[tuple[list[int], bool]]:
    """Each prompt's greedy continuation (up to `new_tokens`, cut after its first stop id), in the
    prompts' order. Prompts of like length are batched together, left-padded: generation one prompt
    at a time spends most of its time reading the weights once per token."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(prompts[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    n = len(prompts[i])
                    ids[row, width - n:] = torch.tensor(list(prompts[i]))
                    mask[row, width - n:] = 1
                gen = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                     eos_token_id=sorted(stop_ids) or None, pad_token_id=pad_id)
                for row, i in enumerate(chunk):
                    out[i] = until_stop(gen[row, width:].tolist(), stop_ids)
                if on_batch is not None:
                    on_batch(len(chunk))
    finally:
        model.train(was_training)
    return out
