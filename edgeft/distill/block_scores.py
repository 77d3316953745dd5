"""The "block" layer pick's scores, each pruned model run only from where it departs from the teacher.

Every candidate drops one contiguous block [s, s + d) of the teacher's layers and keeps the rest.
Layers 0..s-1 of that pruned model compute exactly what the teacher's do, so their output is the
teacher's own hidden state at layer s: computed once for all candidates, each candidate then runs
only its layers from s on, fed that state as `inputs_embeds`. The scores are those of the whole
pruned model (a test pins them against it), for about half the layer passes."""

from __future__ import annotations

from typing import Callable, Sequence

from edgeft.distill import student as student_mod
from edgeft.distill.evaluate import evaluate
from edgeft.distill.logits import target_logits
from edgeft.distill.records import Record, collate

def _tail_start(keep: Sequence[int], n_teacher: int) -> int:
    """The first teacher layer the candidate computes differently from the teacher: the start of
    the dropped block, or the layer before it when the block reaches the end (so the tail still
    holds a layer)."""
    kept = set(keep)
    first_dropped = next((i for i in range(n_teacher) if i not in kept), n_teacher)
    if first_dropped == n_teacher:  # nothing dropped: the whole teacher
        return 0
    if any(i > first_dropped for i in keep):
        return first_dropped
    return max(0, first_dropped - 1)


def block_nlls(tmodel, candidates: Sequence[tuple[int, ...]], records: Sequence[Record], pad_id: int, batch_size: int,
               on_done: Callable[[], None] | None = None) -> list[float]:
    """The mean target-token NLL on `records` of the teacher pruned to each of `candidates`."""
    import torch

    n_teacher = tmodel.config.num_hidden_layers
    batches = [collate(records[i:i + batch_size], pad_id) for i in range(0, len(records), batch_size)]
    was_training = tmodel.training
    tmodel.eval()
    out: list[float] = []
    try:
        with torch.no_grad():
            # hidden_states[j] is the input of teacher layer j for j < n (the last entry is after the final norm)
            states = [target_logits(tmodel, b, output_hidden_states=True)[1].hidden_states for b in batches]
            for keep in candidates:
                start = _tail_start(keep, n_teacher)
                tail = student_mod.drop_layers(tmodel, tuple(i for i in keep if i >= start))
                out.append(evaluate(tail, records, pad_id, batch_size, embeds=[hs[start] for hs in states]).nll)
                del tail
                if on_done is not None:
                    on_done()
    finally:
        tmodel.train(was_training)
    return out
