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
from edgeft.greedy import greedy_answers


@dataclass(frozen=True)
class OwnAnswers:
    records: list[Record]
    tokens: int  # answer tokens, the stops included
    ended: int  # answers that stopped on an end-of-turn id before the token budget


def prompt_of(record: Record) -> tuple[int, ...]:
    """A record's tokens before its first target: the rendered prompt."""
    first = next(i for i, label in enumerate(record.labels) if label != IGNORE)
    return record.input_ids[:first]


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

