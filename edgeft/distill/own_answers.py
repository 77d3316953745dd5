"""On-policy records: the student's own greedy answers to the training prompts, for the teacher to score.

A student trained only on the teacher's text never learns what to say next from where its own
first tokens take it, and its greedy answers go wrong exactly there (benchmarks/README.md,
"On-policy distillation"). So before training, the pruned student answers every training prompt
greedily; each answer becomes one more training record whose targets are the student's tokens.
The distillation loss then scores every position by the teacher's logits (GKD, MiniLLM). Cross-
entropy on these tokens would teach the student what it already says, so they train on the
teacher's logits alone (`alpha` 1.0, checked by DistillConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from edgeft.distill.records import IGNORE, Record


@dataclass(frozen=True)
class OwnAnswers:
    records: list[Record]
    tokens: int  # answer tokens, the stops included
    ended: int  # answers that stopped on an end-of-turn id before the token budget


def prompt_of(record: Record) -> tuple[int, ...]:
    """A record's tokens before its first target: the rendered prompt."""
    first = next(i for i, label in enumerate(record.labels) if label != IGNORE)
    return record.input_ids[:first]


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


def own_answer_records(model, records: Sequence[Record], *, new_tokens: int, stop_ids: set[int], pad_id: int,
                       max_length: int, batch_size: int, on_batch: Callable[[int], None] | None = None) -> OwnAnswers:
    """One record per training record: its prompt, then `model`'s greedy answer as the targets."""
    prompts = [prompt_of(r) for r in records]
    answers = greedy_answers(model, prompts, new_tokens=new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                             batch_size=batch_size, on_batch=on_batch)
    out, tokens, ended = [], 0, 0
    for prompt, (answer, stopped) in zip(prompts, answers):
        ids = (tuple(prompt) + tuple(answer))[:max_length]
        labels = ((IGNORE,) * len(prompt) + tuple(answer))[:max_length]
        if any(t != IGNORE for t in labels[1:]):  # a prompt at max_length leaves nothing to score
            out.append(Record(ids, labels))
            tokens += sum(t != IGNORE for t in labels)
            ended += stopped
    return OwnAnswers(records=out, tokens=tokens, ended=ended)

