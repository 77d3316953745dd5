"""Every distillation default, once: `DistillConfig`, plus the `--preset` table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from edgeft.errors import ConfigError

# Who quantizes the base to NF4 when `quantize_base` is on. "auto": bitsandbytes when it can be
# imported, else torchao (QLoRA's NF4 either way; measured speeds in the --nf4-engine help).
NF4_ENGINES = ("auto", "bitsandbytes", "torchao")


LAYER_PICKS = ("even", "ends", "block")
METHODS = ("lora", "prefix")


@dataclass(frozen=True)
class DistillConfig:
    """How a student is built and taught. The defaults are a laptop demo (minutes on a CPU)."""

    # the student
    student: str | None = None  # a model source with the teacher's tokenizer; None: prune the teacher
    student_layers: int | None = None  # None with no `student`: half the teacher's layers
    keep_layers: tuple[int, ...] | None = None  # explicit teacher layer indices (overrides layer_pick)
    # which teacher layers a pruned student keeps: "even" spacing (first and last included); the
    # "ends": the first ceil(N/2) and the last floor(N/2) layers; or "block": the contiguous block
    # whose removal costs least on a few training records (student.best_block). On SmolLM2-135M,
    # 15 of 30 layers, held-out perplexity before training: even ~338,000, ends ~3,500, block ~440
    layer_pick: str = "even"
    # A pruned student's dropped layers replaced by a least-squares linear map folded into the MLP
    # before them (distill.stand_in): no new weights, seconds of the teacher's time. False: a plain drop.
    stand_in: bool = True
    # only for the size estimate printed before training; None: no estimate (a build measures its
    # candidates' files instead, and an estimate at another level or token table misleads)
    target_quant: str | None = "q4_k_m"
    # QLoRA
    quantize_base: bool = True  # NF4 (QLoRA) base; False: plain LoRA on an fp32 base
    nf4_engine: str = "auto"  # one of NF4_ENGINES; only read when quantize_base is on
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)
    # "lora", or "prefix": peft's prefix tuning, `prefix_tokens` learned keys and values per layer
    # prepended to the KV cache (no weight changes, so nothing merges: it ships as an initial cache)
    method: str = "lora"
    prefix_tokens: int = 20
    prefix_init: str = "text"  # "text": the base's keys and values for a training record's first tokens; "random": peft's
    # the loss
    alpha: float = 0.5  # weight of the KD term; 1 - alpha weighs cross-entropy on the targets
    # T = 1: on the default model and data (24 steps, held-out target perplexity) T = 2 reached 385,
    # T = 1 195; a softened teacher teaches a flatter student than the eval wants in few steps
    temperature: float = 1.0
    top_k: int = 64  # teacher log-probs kept per target token in the cache
    # Weight of a hidden-state term beside the logit loss (Minitron-style): 1 - cosine between each
    # student layer's output and the teacher's at the layer it was copied from, on every non-padding
    # token. 0 turns it off; > 0 runs the teacher live every step (a pruned student only).
    hidden_weight: float = 0.0
    use_teacher_cache: bool = True  # False: run the teacher every step (for the speed benchmark)
    # On-policy records: before training, the student answers every training prompt greedily, up to
    # this many tokens, and each answer trains as one more record scored by the teacher's logits alone
    # (needs alpha 1.0: cross-entropy on them would teach the student what it already says). 0: off.
    own_answer_tokens: int = 0
    # the loop
    # 150 x 4 x 2 = 4.6 passes over the default data (259 records), about 20 minutes on 2 CPU cores.
    # On the default model (15-layer block student, sampled targets) 60 steps only tied plain
    # fine-tuning (34.2 vs 34.7, pilot data); at 150 steps on the default data distillation wins in
    # both seeds tried (15.7 vs 17.2, 15.9 vs 17.4): by then fine-tuning fits its one sampled answer
    # per prompt (lower train CE) while the teacher's full distribution keeps the student general.
    steps: int = 150
    batch_size: int = 4
    grad_accum: int = 2
    lr: float = 1e-3  # LoRA on a pruned student, few steps: 1e-3 halved the perplexity 3e-4 reached in 24 steps
    weight_decay: float = 0.0
    warmup_steps: int = 15
    max_grad_norm: float = 1.0
    grad_checkpointing: bool = False
    seed: int = 0
    max_length: int = 256  # records longer than this are cut (targets beyond are dropped)
    save_every: int = 25  # checkpoint every N optimizer steps; 0: never
    keep_checkpoints: int = 2
    eval_batch_size: int = 8
    max_eval_records: int = 64  # eval split records used before/after training; 0: all
    # continual updates (`edgeft distill --continue`)
    continue_from: str | None = None  # an adapter folder to keep training (on its own base) instead of a new LoRA
    ewc_lambda: float = 0.0  # λ of the EWC penalty λ·ΣF(θ−θ*)², fixed for the whole run; 0: off
    replay_ratio: float = 0.0  # old-task training records mixed in, per new record (0.25: one old for four new)
    fisher_records: int = 0  # training records the diagonal Fisher is estimated on after training, stored with the adapter

    def with_overrides(self, **changes: Any) -> "DistillConfig":
        """Apply CLI flags (None = not given) and validate the result as a whole."""
        changes = {k: v for k, v in changes.items() if v is not None}
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems: list[tuple[str, str]] = []
        positive = ("lora_rank", "lora_alpha", "top_k", "steps", "batch_size", "grad_accum", "max_length", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                problems.append((name, f"must be at least 1, got {getattr(self, name)}"))
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(("alpha", f"must be within [0, 1], got {self.alpha}"))
        if self.temperature <= 0:
            problems.append(("temperature", f"must be positive, got {self.temperature}"))
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(("lora_dropout", f"must be within [0, 1), got {self.lora_dropout}"))
        if self.own_answer_tokens < 0:
            problems.append(("own_answer_tokens", f"must be 0 (off) or more, got {self.own_answer_tokens}"))
        elif self.own_answer_tokens and self.alpha != 1.0:
            problems.append(("own_answer_tokens", f"the student's own answers train on the teacher's logits alone: "
                                                  f"alpha must be 1.0, got {self.alpha}"))
        elif self.own_answer_tokens and self.continue_from is not None:
            problems.append(("own_answer_tokens", "--continue updates an adapter on new task data; the student's own "
                                                  "answers are for a new distillation"))
        if self.hidden_weight < 0:
            problems.append(("hidden_weight", f"must be 0 or more, got {self.hidden_weight}"))
        if self.hidden_weight > 0 and self.student is not None:
            problems.append(("hidden_weight", "needs a student pruned from the teacher (its layer map), not --student"))
        if self.method not in METHODS:
            problems.append(("method", f"must be one of {', '.join(METHODS)}, got {self.method!r}"))
        elif self.method == "prefix":
            if self.prefix_init not in ("text", "random"):
                problems.append(("prefix_init", f"must be text or random, got {self.prefix_init!r}"))
            if not 1 <= self.prefix_tokens <= 256:
                problems.append(("prefix_tokens", f"must be within 1..256, got {self.prefix_tokens}"))
            if self.quantize_base:
                problems.append(("method", "prefix tuning trains on an fp32 base (no NF4: nothing of the base is adapted)"))
            if self.continue_from is not None:
                problems.append(("method", "--continue updates a LoRA adapter; prefix tuning starts afresh"))
        if self.lr <= 0:
            problems.append(("lr", f"must be positive, got {self.lr}"))
        for name in ("warmup_steps", "save_every", "max_eval_records", "weight_decay"):
            if getattr(self, name) < 0:
                problems.append((name, f"must not be negative, got {getattr(self, name)}"))
        if self.max_grad_norm <= 0:
            problems.append(("max_grad_norm", f"must be positive, got {self.max_grad_norm}"))
        if self.nf4_engine not in NF4_ENGINES:
            problems.append(("nf4_engine", f"must be one of {', '.join(NF4_ENGINES)}, got {self.nf4_engine!r}"))
        elif self.nf4_engine != "auto" and not self.quantize_base:
            problems.append(("nf4_engine", f"{self.nf4_engine} quantizes an NF4 base, but the base is not quantized "
                                           "(drop --no-quantize-base or --nf4-engine)"))
        if self.ewc_lambda < 0 or self.replay_ratio < 0 or self.fisher_records < 0:
            problems.append(("ewc", "--ewc, --replay and --fisher-records must not be negative"))
        if (self.ewc_lambda > 0 or self.replay_ratio > 0) and self.continue_from is None:
            problems.append(("ewc", "--ewc and --replay update an existing adapter: give it with --continue ADAPTER_DIR"))
        if self.continue_from is not None and (self.student is not None or self.student_layers is not None
                                               or self.keep_layers is not None):
            problems.append(("continue_from", "--continue trains the adapter on its own base; drop --student/--student-layers/--keep-layers"))
        if self.keep_checkpoints < 1:
            problems.append(("keep_checkpoints", f"must be at least 1, got {self.keep_checkpoints}"))
        if self.layer_pick not in LAYER_PICKS:
            problems.append(("layer_pick", f"must be one of {', '.join(LAYER_PICKS)}, got {self.layer_pick!r}"))
        if self.student_layers is not None and self.student_layers < 1:
            problems.append(("student_layers", f"must be at least 1, got {self.student_layers}"))
        if self.student is not None and (self.student_layers is not None or self.keep_layers is not None):
            problems.append(("student", "give either a student model or --student-layers/--keep-layers, not both"))
        if self.keep_layers is not None:
            if len(set(self.keep_layers)) != len(self.keep_layers) or any(i < 0 for i in self.keep_layers):
                problems.append(("keep_layers", "must be distinct non-negative layer indices"))
            if self.student_layers is not None and self.student_layers != len(self.keep_layers):
                problems.append(("keep_layers", f"lists {len(self.keep_layers)} layers but --student-layers is {self.student_layers}"))
        if problems:
            raise ConfigError(problems, file="<distill config>")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("keep_layers", "target_modules"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


# `--preset NAME`: a named starting point that flags then override.
PRESETS: dict[str, DistillConfig] = {
    # about 20 minutes on a 2-core CPU: where distillation pulled ahead of plain fine-tuning, not a finished model
    "demo": DistillConfig(),
    # a serious run (hours on a CPU, minutes on a GPU): more steps, a larger effective batch,
    # longer sequences and a wider teacher distribution
    "full": DistillConfig(
        steps=2000, batch_size=8, grad_accum=4, lr=2e-4, warmup_steps=100, lora_rank=64, lora_alpha=128,
        top_k=128, max_length=1024, save_every=200, max_eval_records=0, grad_checkpointing=True,
    ),
}


def preset(name: str) -> DistillConfig:
    if name not in PRESETS:
        raise ConfigError([("preset", f"unknown preset {name!r} (known: {', '.join(PRESETS)})")], file="--preset")
    return PRESETS[name]
