"""Elastic Weight Consolidation on a LoRA adapter's parameters: continual updates without forgetting.

When an adapter is trained, the diagonal of the Fisher information of its parameters is estimated on
that task's data and stored beside it (`fisher.safetensors`), with the parameters themselves as the
anchor θ*. A later update on new data adds `λ · Σ F (θ − θ*)²` to the loss: parameters the old task
leaned on (large F) are held near where it left them, the others are free to move.

F is the empirical Fisher: per record, the squared gradient of that record's loss (the mean NLL of
its target tokens), averaged over records. One record per backward pass, because the square of a
batch's gradient is not the mean of its records' squares."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

if TYPE_CHECKING:
    import torch

FISHER_FILE = "fisher.safetensors"


def fisher_diagonal(params: Mapping[str, "torch.Tensor"], record_losses: Iterable[Callable[[], "torch.Tensor"]]) -> dict[str, "torch.Tensor"]:
    """Mean over records of each parameter's squared gradient. `record_losses` yields one closure per
    record that runs the model and returns that record's scalar loss."""
    import torch

    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    for loss_of in record_losses:
        for p in params.values():
            p.grad = None
        loss_of().backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float() ** 2
        count += 1
    for p in params.values():
        p.grad = None
    if count == 0:
        raise ValueError("the Fisher information needs at least one record")
    return {name: f / count for name, f in fisher.items()}


def penalty(params: Mapping[str, "torch.Tensor"], anchor: Mapping[str, "torch.Tensor"], fisher: Mapping[str, "torch.Tensor"],
            lam: float) -> "torch.Tensor":
    """λ · Σ F (θ − θ*)² over every anchored parameter."""
    import torch

    total = torch.zeros((), dtype=torch.float32)
    for name, f in fisher.items():
        total = total + (f * (params[name].float() - anchor[name].float()) ** 2).sum()
    return lam * total


def save(folder: Path, fisher: Mapping[str, "torch.Tensor"], anchor: Mapping[str, "torch.Tensor"], *, records: int) -> Path:
    """F and θ* beside the adapter, under the adapter's own parameter names."""
    from safetensors.torch import save_file

    tensors = {f"fisher.{k}": v.contiguous() for k, v in fisher.items()}
    tensors.update({f"anchor.{k}": v.detach().float().contiguous() for k, v in anchor.items()})
    path = Path(folder) / FISHER_FILE
    save_file(tensors, str(path), metadata={"records": str(records)})
    return path


def load(folder: Path) -> tuple[dict[str, "torch.Tensor"], dict[str, "torch.Tensor"]]:
    """(F, θ*) stored with an adapter; an adapter trained without them cannot be updated with EWC."""
    from safetensors.torch import load_file

    from edgeft.errors import EdgeftError

    path = Path(folder) / FISHER_FILE
    if not path.is_file():
        raise EdgeftError(f"no {FISHER_FILE}: this adapter was trained without its Fisher information, so --ewc has "
                          "nothing to hold it to (train it with --fisher-records N)", file=folder)
    data = load_file(str(path))
    fisher = {k[len("fisher."):]: v for k, v in data.items() if k.startswith("fisher.")}
    anchor = {k[len("anchor."):]: v for k, v in data.items() if k.startswith("anchor.")}
    if set(fisher) != set(anchor):
        raise EdgeftError("the Fisher and anchor tensors name different parameters", file=path)
    return fisher, anchor
