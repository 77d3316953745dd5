"""The teacher's top-k log-probabilities per target token, computed once and kept on disk.

One safetensors file per (teacher, records, k): `ids` [N, k] int32, `logprobs` [N, k] float16
and `offsets` [R + 1] int64 (record r owns rows offsets[r]:offsets[r+1], one per target position
in order). Later epochs, reruns and other students read it instead of running the teacher."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.atomic_io import atomic_path
from edgeft.distill.logits import target_logits
from edgeft.distill.records import IGNORE, Record, collate
from edgeft.progress import progress

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

FORMAT = 1


@dataclass
class TeacherCache:
    ids: "torch.Tensor"  # [N, k] int32
    logprobs: "torch.Tensor"  # [N, k] float16
    offsets: "torch.Tensor"  # [R + 1] int64

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def rows(self, record_index: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        a, b = int(self.offsets[record_index]), int(self.offsets[record_index + 1])
        return self.ids[a:b].long(), self.logprobs[a:b].float()


def cache_key(teacher_hash: str, records: Sequence[Record], k: int) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "teacher": teacher_hash, "k": k}).encode())
    for r in records:
        h.update(json.dumps([r.input_ids, r.labels]).encode())
    return h.hexdigest()[:24]


def teacher_topk(model: "PreTrainedModel", batch: dict, k: int) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """Top-k log-probs at each record's target positions, in order: [(ids [n, k], logprobs [n, k])] per record."""
    import torch

    with torch.no_grad():
        logits = target_logits(model, batch)[0]  # [n, vocab], record by record
    out, start = [], 0
    for n in (batch["targets"] != IGNORE).sum(dim=1).tolist():
        logp = torch.log_softmax(logits[start:start + n].float(), dim=-1)  # [n, vocab]
        start += n
        vals, idx = logp.topk(min(k, logp.shape[-1]), dim=-1)
        out.append((idx, vals))
    return out


def build(model: "PreTrainedModel", records: Sequence[Record], k: int, pad_id: int, batch_size: int) -> TeacherCache:
    import torch

    ids, lps, offsets = [], [], [0]
    starts = range(0, len(records), batch_size)
    for start in progress(starts, desc="teacher top-k", total=len(starts)):
        for idx, vals in teacher_topk(model, collate(records[start:start + batch_size], pad_id), k):
            ids.append(idx.to(torch.int32))
            lps.append(vals.to(torch.float16))
            offsets.append(offsets[-1] + idx.shape[0])
    return TeacherCache(torch.cat(ids), torch.cat(lps), torch.tensor(offsets, dtype=torch.int64))


def save(cache: TeacherCache, path: Path) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"ids": cache.ids.contiguous(), "logprobs": cache.logprobs.contiguous(), "offsets": cache.offsets},
                  str(tmp), metadata={"format": str(FORMAT)})
    return path


def load(path: Path) -> TeacherCache:
    from safetensors.torch import load_file

    t = load_file(str(path))
    return TeacherCache(t["ids"], t["logprobs"], t["offsets"])


def get_or_build(cache_dir: Path, teacher_hash: str, model_factory, records: Sequence[Record], k: int, pad_id: int,
                 batch_size: int) -> tuple[TeacherCache, bool]:
    """The cache for these records, read from `cache_dir` or built (running the teacher) and saved.
    Returns (cache, was_hit). `model_factory` is only called on a miss."""
    path = cache_dir / f"teacher-top{k}-{cache_key(teacher_hash, records, k)}.safetensors"
    if path.is_file():
        cache = load(path)
        if cache.offsets.numel() == len(records) + 1:
            return cache, True
    cache = build(model_factory(), records, k, pad_id, batch_size)
    save(cache, path)
    return cache, False
