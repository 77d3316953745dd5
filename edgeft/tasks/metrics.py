"""How each kind of task is scored from a model's greedy answer: exact label, exact fields, or likelihood.

A task's kind comes from its records' `metadata.task_type` (the shipped example: intent, extract,
reply); a task with no recognised kind is scored by likelihood against the teacher only."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def label_of(answer: str) -> str:
    """The label a model answered: its first word, lower-cased ("Weather." -> "weather"); '' if none."""
    m = _WORD.search(answer)
    return m.group(0).lower() if m else ""


def fields_of(answer: str) -> dict[str, str] | None:
    """The first JSON object in an answer, its values as strings; None when there is none that parses."""
    start = answer.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(answer)):
            depth += {"{": 1, "}": -1}.get(answer[i], 0)
            if depth == 0:
                try:
                    data = json.loads(answer[start:i + 1])
                except json.JSONDecodeError:
                    break
                if isinstance(data, dict):
                    return {str(k): str(v) for k, v in data.items()}
                break
        start = answer.find("{", start + 1)
    return None


@dataclass(frozen=True)
class TaskScore:
    kind: str  # "label", "fields" or "likelihood"
    value: float  # accuracy % (label), field match % (fields); likelihood tasks are scored elsewhere
    exact: float | None  # fields: % of records with every field right; None otherwise
    records: int


def score_labels(answers: Sequence[str], golds: Sequence[str]) -> TaskScore:
    """Exact-label accuracy, %."""
    right = sum(label_of(a) == g.strip().lower() for a, g in zip(answers, golds, strict=True))
    return TaskScore("label", 100.0 * right / max(len(golds), 1), None, len(golds))


def score_fields(answers: Sequence[str], golds: Sequence[str]) -> TaskScore:
    """Exact field match: % of gold fields answered with exactly the gold value (an answer with no
    JSON object gets none), and % of records with every field right."""
    fields = whole = total = 0
    for answer, gold in zip(answers, golds, strict=True):
        want = json.loads(gold)
        got = fields_of(answer) or {}
        hits = sum(got.get(k, "").strip() == str(v) for k, v in want.items())
        fields += hits
        total += len(want)
        whole += hits == len(want)
    return TaskScore("fields", 100.0 * fields / max(total, 1), 100.0 * whole / max(len(golds), 1), len(golds))


# metadata.task_type -> how answers are scored
KINDS = {"intent": "label", "classification": "label", "extract": "fields", "extraction": "fields"}


def kind_of(task_type: str | None) -> str:
    return KINDS.get((task_type or "").lower(), "likelihood")


def score(kind: str, answers: Sequence[str], golds: Sequence[str]) -> TaskScore:
    if kind == "label":
        return score_labels(answers, golds)
    if kind == "fields":
        return score_fields(answers, golds)
    raise ValueError(f"a {kind} task is scored by likelihood against the teacher, not from answers")
