"""A pruned student's dropped layers, each run of them replaced by a linear map folded into the MLP before it.

Dropping teacher layers [s, e) leaves layer s-1's output where layer e-1's was. Layer s-1 adds its
MLP's output M to a residual stream Y; the teacher's stream after layer e-1 is H. A matrix T with
Y + M T close to H, fitted by least squares on the teacher's own states over training records,
folds into layer s-1's down projection (W <- T^T W): the same shapes and file size, and nothing new
for any backend to run (the training-free "ReplaceMe" step, Shopkhoev et al. 2025). The fit is
pulled towards T = I, the plain drop, so that a few tokens cannot make it much worse than dropping,
and it is kept only when it lowers the pruned model's NLL on the calibration records.

On the tight demo (SmolLM2-135M, layer 17 of 30 dropped) it took the untrained student's held-out
perplexity most of the way that training used to: benchmarks/README.md, "A linear stand-in"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from edgeft.distill.records import Record, collate

if TYPE_CHECKING:
    import torch

FIT_TOKENS = 16384  # training tokens a fit reads at most (the tight demo's 88 records hold about 10,000)
RIDGE = 0.1  # pull towards T = I, times the mean of diag(M^T M); 0.01-1 were within 0.5 % on the tight demo


@dataclass(frozen=True)
class Fold:
    dropped: tuple[int, int]  # teacher layers [start, end) the map stands in for
    into: int  # the teacher layer (kept) whose down projection takes it
    tokens: int  # tokens it was fitted on

    def to_dict(self) -> dict:
        return {"dropped": list(range(*self.dropped)), "into_layer": self.into, "tokens": self.tokens}


def gaps(keep: Sequence[int], n_teacher: int) -> list[tuple[int, int]]:
    """The runs [start, end) of dropped teacher layers that have a kept layer before them."""
    kept, out, start = set(keep), [], None
    for i in range(n_teacher + 1):
        if i < n_teacher and i not in kept:
            start = i if start is None else start
        elif start is not None:
            if start > 0:
                out.append((start, i))
            start = None
    return out


def foldable(layer) -> str | None:
    """Why `layer`'s MLP output cannot take a linear map (None when it can): the fold needs the MLP's
    down projection to be added to the residual stream as it is."""
    import torch

    down = getattr(getattr(layer, "mlp", None), "down_proj", None)
    if not isinstance(down, torch.nn.Linear) or down.bias is not None:
        return "its MLP has no bias-free down_proj"
    if getattr(layer, "post_feedforward_layernorm", None) is not None:
        return "its MLP output is normalized before the residual add (Gemma-style)"
    return None


def layer_map(keep: Sequence[int], folds: Sequence[Fold]) -> tuple[int, ...]:
    """The teacher layer whose output each student layer's output stands for: a layer that took a
    map now stands for the last layer it replaces."""
    last = {f.into: f.dropped[1] - 1 for f in folds}
    return tuple(last.get(k, k) for k in keep)


class _Stop(Exception):
    """Ends the teacher's forward pass once the last layer a fit needs has run."""


def _output(out) -> "torch.Tensor":
    return out[0] if isinstance(out, tuple) else out


def _spread(records: Sequence[Record], tokens: int) -> list[Record]:
    """Evenly spaced records holding at most `tokens` tokens (at least one record)."""
    step = max(1, -(-sum(len(r.input_ids) for r in records) // tokens))  # ceil(total / tokens)
    out, n = [], 0
    for r in records[::step]:
        if out and n + len(r.input_ids) > tokens:
            break
        out.append(r)
        n += len(r.input_ids)
    return out


def fit(teacher, runs: Sequence[tuple[int, int]], records: Sequence[Record], pad_id: int, batch_size: int,
        ridge: float = RIDGE, max_tokens: int = FIT_TOKENS) -> tuple[dict[tuple[int, int], "torch.Tensor"], int]:
    """Each run's map T [d, d] fitted on the teacher's states over `records` (padding excluded), and
    the number of tokens. The teacher runs once, up to the last layer any run needs."""
    import torch

    layers = teacher.model.layers
    acc = {run: [0, 0] for run in runs}  # run -> [M^T M, M^T (H - Y)], float64
    cap: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for s, e in runs:
        hooks.append(layers[s - 1].mlp.register_forward_hook(lambda m, i, o, s=s: cap.__setitem__(("mlp", s - 1), o)))
        hooks.append(layers[s - 1].register_forward_hook(lambda m, i, o, s=s: cap.__setitem__(("out", s - 1), _output(o))))
        hooks.append(layers[e - 1].register_forward_hook(lambda m, i, o, e=e: cap.__setitem__(("out", e - 1), _output(o))))
    last = max(e for _, e in runs) - 1

    def stop(m, i, o):
        raise _Stop

    hooks.append(layers[last].register_forward_hook(stop))
    used = _spread(records, max_tokens)
    n = 0
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(used), batch_size):
                batch = collate(used[start:start + batch_size], pad_id)
                try:
                    teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                except _Stop:
                    pass
                sel = batch["attention_mask"].bool()
                n += int(sel.sum())
                for (s, e), parts in acc.items():
                    m = cap[("mlp", s - 1)][sel].double()
                    y = cap[("out", s - 1)][sel].double() - m
                    h = cap[("out", e - 1)][sel].double()
                    parts[0] = parts[0] + m.T @ m
                    parts[1] = parts[1] + m.T @ (h - y)
    finally:
        for hook in hooks:
            hook.remove()
        teacher.train(was_training)
    maps = {}
    for run, (mm, mg) in acc.items():
        eye = torch.eye(mm.shape[0], dtype=mm.dtype)
        lam = ridge * float(mm.diagonal().mean())
        maps[run] = torch.linalg.solve(mm + lam * eye, mg + lam * eye)
    return maps, n


def _down(student, keep: Sequence[int], run: tuple[int, int]) -> "torch.Tensor":
    """The weight of the down projection a run's map folds into: the student layer copied from the
    teacher layer just before the run."""
    return student.model.layers[list(keep).index(run[0] - 1)].mlp.down_proj.weight


def fold(student, keep: Sequence[int], maps: dict[tuple[int, int], "torch.Tensor"]) -> None:
    """Fold each run's map into its down projection (`_down`), in place: down(x) T = x (T^T W)^T."""
    import torch

    with torch.no_grad():
        for run, t in maps.items():
            weight = _down(student, keep, run)
            weight.copy_((t.T @ weight.double()).to(weight.dtype))


def stand_in(teacher, student, keep: Sequence[int], records: Sequence[Record], calib: Sequence[Record], pad_id: int,
             batch_size: int, nll: Callable[[object, Sequence[Record]], float],
             dropped_nll: float | None = None) -> tuple[list[Fold], dict]:
    """Fit and fold a map for every foldable run of dropped layers into `student` (pruned from
    `teacher` to `keep`), in place, and keep them when they lower `nll` on `calib` (in-sample: the
    check catches a map that does not fit the architecture; the eval split measures the gain).
    `dropped_nll`: the plain drop's `nll` on `calib`, when the caller has it (the block pick scored it).
    Returns the folds kept and a record for student.json (with the reason when none was kept)."""
    runs = gaps(keep, teacher.config.num_hidden_layers)
    if not runs:
        return [], {"folds": [], "reason": "no dropped layer has a kept layer before it"}
    why = {run: foldable(teacher.model.layers[run[0] - 1]) for run in runs}
    runs = [run for run in runs if why[run] is None]
    if not runs:
        first = min(why)
        return [], {"folds": [], "reason": f"layer {first[0] - 1} cannot take a map: {why[first]}"}
    saved = {run: _down(student, keep, run).detach().clone() for run in runs}
    before = nll(student, calib) if dropped_nll is None else dropped_nll
    maps, tokens = fit(teacher, runs, records, pad_id, batch_size)
    fold(student, keep, maps)
    after = nll(student, calib)
    record = {"ridge": RIDGE, "calibration_records": len(calib), "calibration_nll": {"dropped": before, "stand_in": after}}
    if not after < before:
        for run, weight in saved.items():
            _down(student, keep, run).data.copy_(weight)
        return [], record | {"folds": [], "reason": f"the fitted map did not lower the calibration NLL ({before:.4f} -> {after:.4f})"}
    folds = [Fold(run, run[0] - 1, tokens) for run in runs]
    return folds, record | {"folds": [f.to_dict() for f in folds]}
