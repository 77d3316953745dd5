"""The distillation loss: alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE, on target tokens only.

The teacher arrives as its top-k log-probabilities (at temperature 1) per target position.
Softening a truncated distribution: softmax(z/T) restricted to the top-k ids equals
softmax(logp/T) over those k entries, because log p = z - logsumexp(z) and the constant
cancels. So the teacher side is renormalized over its top k at temperature T; the student side
is its full-vocabulary log-softmax at temperature T, read at the same ids. The student thus
also learns to put no mass outside the teacher's top k, which is what the (cut) teacher tail
says when k covers almost all of the teacher's mass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class LossParts:
    total: "torch.Tensor"
    kd: "torch.Tensor"
    ce: "torch.Tensor"
    n_tokens: int


def kd_loss(
    student_logits: "torch.Tensor",  # [n, vocab]: student logits at the n target positions
    teacher_ids: "torch.Tensor",  # [n, k] long: the teacher's top-k token ids
    teacher_logprobs: "torch.Tensor",  # [n, k]: the teacher's log-probs (T = 1) at those ids
    targets: "torch.Tensor",  # [n] long: the target tokens
    *,
    alpha: float,
    temperature: float,
) -> LossParts:
    import torch
    import torch.nn.functional as F

    logits = student_logits.float()
    n = logits.shape[0]
    ce = F.cross_entropy(logits, targets, reduction="mean")
    t = temperature
    teacher_p = torch.softmax(teacher_logprobs.float() / t, dim=-1)  # [n, k], renormalized on the top k
    teacher_logp = torch.log_softmax(teacher_logprobs.float() / t, dim=-1)
    student_logp = torch.log_softmax(logits / t, dim=-1).gather(-1, teacher_ids)  # [n, k]
    kl = (teacher_p * (teacher_logp - student_logp)).sum(-1).mean()
    kd = kl * (t * t)  # T^2 keeps the KD gradient's scale independent of T (Hinton et al.)
    total = alpha * kd + (1.0 - alpha) * ce
    return LossParts(total=total, kd=kd.detach(), ce=ce.detach(), n_tokens=n)
