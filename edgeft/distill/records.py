"""Prepared records (JSONL of input_ids/labels/attention_mask) read, checked and batched.

The data stage writes one example per line: {"input_ids": [...], "labels": [...],
"attention_mask": [...]}, labels -100 on prompt and padding tokens. A malformed line is a
one-line error naming the file and the line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.errors import EdgeftError

if TYPE_CHECKING:
    import torch

IGNORE = -100


@dataclass(frozen=True)
class PreparedSplits:
    """The two splits `distill` reads; `edgeft.data.prepare.PreparedData` has the same fields."""

    out_dir: Path
    train: Path
    eval: Path


@dataclass(frozen=True)
class Record:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def open_prepared(folder: Path) -> PreparedSplits:
    train, evl = folder / "train.jsonl", folder / "eval.jsonl"
    for p in (train, evl):
        if not p.is_file():
            raise EdgeftError("a prepared data folder must hold train.jsonl and eval.jsonl; this one is missing", file=p)
    return PreparedSplits(out_dir=folder, train=train, eval=evl)


def read_records(path: Path, *, vocab_size: int, max_length: int) -> list[Record]:
    """Read and check every line; keep records with at least one target token."""
    out: list[Record] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EdgeftError(f"cannot read ({exc.strerror})", file=path) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        place = f"line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EdgeftError(f"invalid JSON: {exc.msg}", file=path, place=place) from None
        if not isinstance(row, dict):
            raise EdgeftError("expected an object with input_ids, labels, attention_mask", file=path, place=place)
        ids, labels = row.get("input_ids"), row.get("labels")
        mask = row.get("attention_mask", [1] * len(ids) if isinstance(ids, list) else None)
        for key, val in (("input_ids", ids), ("labels", labels), ("attention_mask", mask)):
            if not isinstance(val, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
                raise EdgeftError(f"'{key}' must be a list of integers", file=path, place=place)
        if not (len(ids) == len(labels) == len(mask)):
            raise EdgeftError(f"input_ids, labels and attention_mask differ in length ({len(ids)}, {len(labels)}, {len(mask)})",
                              file=path, place=place)
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise EdgeftError(f"token id {bad[0]} is outside the model's vocabulary (size {vocab_size})", file=path, place=place)
        bad = [t for t in labels if t != IGNORE and not 0 <= t < vocab_size]
        if bad:
            raise EdgeftError(f"label {bad[0]} is neither -100 nor a token id", file=path, place=place)
        # padding is dropped here and re-added per batch; labels on padding are ignored anyway
        keep = [i for i, m in enumerate(mask) if m]
        ids_t = tuple(ids[i] for i in keep)[:max_length]
        lab_t = tuple(labels[i] for i in keep)[:max_length]
        if any(t != IGNORE for t in lab_t[1:]):  # position 0 is never predicted
            out.append(Record(ids_t, lab_t))
    if not out:
        raise EdgeftError("no record has a target token (labels are all -100)", file=path)
    return out


def collate(records: Sequence[Record], pad_id: int) -> dict[str, "torch.Tensor"]:
    """Right-pad to the longest record. Returns input_ids/attention_mask [b, s] and `targets`
    [b, s]: the token predicted at each position (labels shifted left), -100 where none counts."""
    import torch

    width = max(len(r.input_ids) for r in records)
    ids = torch.full((len(records), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(records), width), dtype=torch.long)
    targets = torch.full((len(records), width), IGNORE, dtype=torch.long)
    for b, r in enumerate(records):
        n = len(r.input_ids)
        ids[b, :n] = torch.tensor(r.input_ids)
        mask[b, :n] = 1
        if n > 1:
            targets[b, : n - 1] = torch.tensor(r.labels[1:])
    return {"input_ids": ids, "attention_mask": mask, "targets": targets}
