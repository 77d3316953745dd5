"""The student: the teacher with some decoder layers dropped, or a given model with the same vocabulary."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from edgeft.errors import ConfigError, ModelSourceError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

@dataclass(frozen=True)
class StudentInfo:
    kept_layers: tuple[int, ...] | None  # teacher layer indices, or None for a given student
    teacher_layers: int
    layers: int
    parameters: int
    est_bytes: int | None
    quant: str | None
    # the teacher layer whose output each student layer's output stands for, where a linear
    # stand-in for dropped layers (distill.stand_in) makes it differ from kept_layers
    stands_for: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {"kept_layers": list(self.kept_layers) if self.kept_layers else None, "teacher_layers": self.teacher_layers,
                "layers": self.layers, "parameters": self.parameters, "estimated_size_bytes": self.est_bytes,
                "estimated_at_quant": self.quant, **({"stands_for": list(self.stands_for)} if self.stands_for else {})}


def evenly_spaced(n_teacher: int, n_keep: int) -> tuple[int, ...]:
    """`n_keep` of `n_teacher` layer indices, first and last always kept, the rest evenly between."""
    if n_keep == 1:
        return (0,)
    return tuple(round(i * (n_teacher - 1) / (n_keep - 1)) for i in range(n_keep))


def ends(n_teacher: int, n_keep: int) -> tuple[int, ...]:
    """The first ceil(n_keep/2) and the last floor(n_keep/2) layers: the embedding-side layers and
    the ones that shape the output stay intact, the middle goes. Measured on SmolLM2-135M (15 of
    30): held-out perplexity before training ~3,500 against ~338,000 for even spacing."""
    head = (n_keep + 1) // 2
    return tuple(range(head)) + tuple(range(n_teacher - (n_keep - head), n_teacher))


def check_count(n_teacher: int, n_keep: int) -> None:
    """One line when a student cannot have `n_keep` of the teacher's layers."""
    if not 1 <= n_keep <= n_teacher:
        raise ConfigError([("student_layers", f"must be between 1 and the teacher's {n_teacher} layers, got {n_keep}")])


def layer_period(layer_types: Sequence[str] | None) -> int:
    """How many layers the teacher's pattern of layer kinds spans before it repeats: 6 for Gemma 3 (five
    sliding-window layers, then a global one), 1 for a model whose layers are all alike.

    A student keeps that pattern, so that it is still a model of its family: llama.cpp, for one, hard-codes
    Gemma 3's every-6th-layer-global layout, and a layer's kind also sets its RoPE base, so turning a
    sliding layer global would change what it computes. Dropping one contiguous block whose length is a
    multiple of the period keeps it: the layers after the block move up by whole periods."""
    if not layer_types:
        return 1
    n = len(layer_types)
    return next(p for p in range(1, n + 1) if all(layer_types[i] == layer_types[i % p] for i in range(n)))


def valid_counts(n_teacher: int, period: int) -> list[int]:
    """The student sizes that keep the teacher's layer pattern, largest first."""
    return list(range(n_teacher, 0, -period))


def check_pattern_count(n_teacher: int, n_keep: int, period: int, place: str = "student_layers") -> None:
    """One line when dropping `n_teacher - n_keep` layers cannot keep a layer pattern of `period`."""
    if (n_teacher - n_keep) % period:
        sizes = ", ".join(str(k) for k in valid_counts(n_teacher, period))
        raise ConfigError([(place, f"{n_keep} layers would break the model's layer pattern, which repeats every {period} "
                                   f"layers (Gemma 3: five sliding-window layers, then a global one): a student of it "
                                   f"keeps {sizes} layers")])


def nearest_count(n_teacher: int, n_keep: int, period: int) -> int:
    """The pattern-keeping student size nearest `n_keep` (the larger one on a tie)."""
    return min(valid_counts(n_teacher, period), key=lambda k: (abs(k - n_keep), -k))


def block_candidates(n_teacher: int, n_keep: int) -> list[tuple[int, ...]]:
    """Every way to keep `n_keep` layers by dropping one contiguous block of the others."""
    check_count(n_teacher, n_keep)
    drop = n_teacher - n_keep
    return [tuple(i for i in range(n_teacher) if not s <= i < s + drop) for s in range(n_teacher - drop + 1)]


def best_block(n_teacher: int, n_keep: int, loss: Callable[[tuple[int, ...]], float]) -> tuple[tuple[int, ...], dict[str, float]]:
    """The contiguous-block removal with the lowest `loss` (the pruned model's NLL on calibration
    records), and every candidate's loss keyed "first-last" of the dropped block.

    Why measure instead of a similarity heuristic: deep-layer pruning work drops the block whose
    input and output hidden states are most alike (smallest angular distance), but on SmolLM2
    (15 of 30) that angle is smallest for dropping [2, 17), a student at held-out perplexity
    ~32,000, while dropping [5, 20) starts at ~440 and the "ends" pick at ~3,500. Sixteen
    forward passes of a few records cost seconds and rank the blocks as held-out data does."""
    scores: dict[str, float] = {}
    best, best_loss = None, float("inf")
    for keep in block_candidates(n_teacher, n_keep):
        dropped = sorted(set(range(n_teacher)) - set(keep))
        value = float(loss(keep))
        scores[f"{dropped[0]}-{dropped[-1]}" if dropped else "none"] = value
        if value < best_loss or best is None:
            best, best_loss = keep, value
    return best, scores


def pick_layers(n_teacher: int, n_keep: int, how: str) -> tuple[int, ...]:
    """`n_keep` of the teacher's layers by `how` ("ends" or "even"; "block" needs a loss, see
    best_block); one line if n_keep does not fit."""
    if not 1 <= n_keep <= n_teacher:
        raise ConfigError([("student_layers", f"must be between 1 and the teacher's {n_teacher} layers, got {n_keep}")])
    return ends(n_teacher, n_keep) if how == "ends" else evenly_spaced(n_teacher, n_keep)


def check_layers(keep: Sequence[int], n_teacher: int) -> tuple[int, ...]:
    bad = [i for i in keep if not 0 <= i < n_teacher]
    if bad:
        raise ConfigError([("keep_layers", f"layer {bad[0]} does not exist (the teacher has layers 0..{n_teacher - 1})")])
    return tuple(sorted(keep))


def drop_layers(teacher: "PreTrainedModel", keep: Sequence[int]) -> "PreTrainedModel":
    """A deep copy of `teacher` holding only the decoder layers in `keep`, weights copied."""
    import torch

    n_teacher = teacher.config.num_hidden_layers
    keep = check_layers(keep, n_teacher)
    student = copy.deepcopy(teacher)
    layers = student.model.layers
    student.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(student.model.layers):
        # the KV cache is indexed by layer_idx; a stale index would mix layers' caches
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    student.config.num_hidden_layers = len(keep)
    layer_types = getattr(student.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n_teacher:
        student.config.layer_types = [layer_types[i] for i in keep]
    return student


def check_pattern(teacher: "PreTrainedModel", keep: Sequence[int]) -> None:
    """One line when a student of `keep` would break the teacher's pattern of layer kinds (`layer_period`).
    Called where students are made; `drop_layers` itself also cuts partial stacks that are only scored
    (the block pick's tails), whose layers keep their own kinds."""
    layer_types = getattr(teacher.config, "layer_types", None)
    if not isinstance(layer_types, list) or len(layer_types) != teacher.config.num_hidden_layers:
        return
    if [layer_types[i] for i in keep] != layer_types[: len(keep)]:
        period = layer_period(layer_types)
        raise ConfigError([("keep_layers", f"layers {list(keep)} break the model's layer pattern, which repeats every "
                                           f"{period} layers: a student keeps it by dropping one contiguous block of a "
                                           f"multiple of {period} layers (--layer-pick block or ends)")])


def parameter_count(model: "PreTrainedModel") -> int:
    # tied embeddings are one tensor: count each storage once
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def info(model: "PreTrainedModel", kept: tuple[int, ...] | None, teacher_layers: int, quant: str | None) -> StudentInfo:
    from edgeft.backends.registry import estimated_bytes

    n = parameter_count(model)
    size = None if quant is None else estimated_bytes(n, quant)
    return StudentInfo(kept, teacher_layers, model.config.num_hidden_layers, n, size, quant)


def check_vocabulary(teacher_tok: "PreTrainedTokenizerBase", student_tok: "PreTrainedTokenizerBase", teacher_vocab: int,
                     student_vocab: int, student_path: Path) -> None:
    """Logit distillation compares distributions id by id: the vocabularies must be the same."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        diff = sorted(set(tv.items()) ^ set(sv.items()), key=lambda kv: kv[1])
        example = f" (first difference: {diff[0][0]!r} -> {diff[0][1]})" if diff else ""
        raise ModelSourceError(
            f"the student's tokenizer differs from the teacher's ({len(sv)} vs {len(tv)} tokens{example}); "
            "logit distillation needs the same vocabulary", file=student_path, place="tokenizer")
    if teacher_vocab != student_vocab:
        raise ModelSourceError(f"the student's vocab_size is {student_vocab} but the teacher's is {teacher_vocab}; "
                               "logit distillation needs the same vocabulary", file=student_path, place="config.json vocab_size")
