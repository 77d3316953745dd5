"""How much each input column of every linear layer matters: the mean square of the activations
that flow into it, measured on the build's own training text.

Why: a quantizer below 8 bits rounds each block of a weight row to minimise that block's error.
Left alone it treats every column alike, but the error a column adds to the layer's output scales
with how large that column's inputs run. Weighting the rounding by the mean square input (the
diagonal of E[x xᵀ], what llama.cpp users call an importance matrix) spends the same bits where
the model uses them, at no cost in size. The values are keyed by HF weight name ("lm_head.weight"
for the output head, tied or not), so a backend maps them to its own tensors.

The text is the build's training split, never its held-out split: the bench scores the shipped
file on that, and a quantizer fitted to it would flatter the result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from edgeft.atomic_io import atomic_path
from edgeft.errors import EdgeftError

FILE = "importance.safetensors"
MOMENTS = "second_moments.safetensors"  # beside FILE, when the target rounds with GPTQ
HEAD = "lm_head.weight"
# Tokens of training text measured: llama.cpp's usual calibration is of this order, and past it the
# means barely move while the forward passes cost build time.
MAX_TOKENS = 8192
BATCH = 8


def read_token_rows(path: Path, max_tokens: int) -> list[list[int]]:
    """The records' real tokens (padding dropped), in file order, until `max_tokens` are taken."""
    rows: list[list[int]] = []
    taken = 0
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ids, mask = row["input_ids"], row.get("attention_mask") or [1] * len(row["input_ids"])
            tokens = [int(i) for i, m in zip(ids, mask) if m]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise EdgeftError("expected an object with input_ids (and attention_mask)", file=path, place=f"line {n}") from None
        if not tokens:
            continue
        tokens = tokens[: max_tokens - taken]
        rows.append(tokens)
        taken += len(tokens)
        if taken >= max_tokens:
            break
    if not rows:
        raise EdgeftError("no tokens to measure the importance of weights on", file=path)
    return rows


def input_sums(model, rows: list[list[int]], batch: int = BATCH, *,
               full: bool = False) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], int]:
    """Run the causal LM `model` over token `rows` and sum, over the real tokens, what flows into each
    linear weight and into the output head (HEAD): per column squares, and with `full` the outer
    products too (the second moments GPTQ needs; each batch's in float32). By HF weight name, float64;
    weights that multiply the same input (q, k and v; gate and up) share one sum, computed once.
    Returns (squares, outer products or {}, {weight: the first weight that takes its input}, token count)."""
    import torch

    decoder = model.get_decoder()
    squares: dict[str, torch.Tensor] = {}
    outer: dict[str, torch.Tensor] = {}
    same_as: dict[str, str] = {}  # a weight's name -> the first weight's that multiplies the same input
    keep: list[torch.Tensor] = []  # the current batch's real-token positions, flattened
    last: list = [None, None]  # the input last summed, and the first weight that took it

    def add(name: str, x: torch.Tensor) -> None:
        if last[0] is x:
            if same_as.setdefault(name, last[1]) != last[1]:
                raise RuntimeError(f"{name} took another weight's input in an earlier batch")
            return
        if same_as.get(name, name) != name:
            raise RuntimeError(f"{name} took {same_as[name]}'s input in an earlier batch, not now")
        last[:] = [x, name]
        flat = x.reshape(-1, x.shape[-1])[keep[0]]
        squares[name] = squares.get(name, 0) + (flat.double() ** 2).sum(0)
        if full:
            outer[name] = outer.get(name, 0) + (flat.float().T @ flat.float()).double()

    handles = [m.register_forward_pre_hook(lambda module, args, name=f"{n}.weight": add(name, args[0]))
               for n, m in decoder.named_modules(prefix=_prefix(model, decoder)) if isinstance(m, torch.nn.Linear)]
    tokens = 0
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                width = max(map(len, chunk))
                ids = torch.tensor([r + [0] * (width - len(r)) for r in chunk])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk])
                keep[:] = [mask.reshape(-1).bool()]
                add(HEAD, decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state)  # what the head multiplies
                tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
        last[:] = [None, None]
    for name, first in same_as.items():
        squares[name] = squares[first]
        if full:
            outer[name] = outer[first]
    return squares, outer, same_as, tokens


def shared_moments(metadata: dict[str, str] | None, stored: Iterable[str]) -> dict[str, str]:
    """Every weight's name -> the name its second moments are stored under in a MOMENTS file, from the
    file's tensor names and its "same_as" metadata (weights that share an input are stored once)."""
    out = {name: name for name in stored}
    out.update(json.loads((metadata or {}).get("same_as", "{}")))
    return out


def collect(model_dir: Path, records: Path, out: Path, *, max_tokens: int = MAX_TOKENS, batch: int = BATCH,
            moments: Path | None = None) -> dict[str, Any]:
    """Run the HF model at `model_dir` over `records` (JSONL with input_ids) and write, atomically to
    `out`, each linear weight's mean square input per column (float32, by HF weight name); with
    `moments`, also the full second moments E[x xᵀ] there, whose diagonal that is (for GPTQ): the
    same pass, and the same importance either way. Returns what was measured: records, tokens,
    tensors, whether the moments were written, and seconds."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM

    from edgeft.progress import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    rows = read_token_rows(records, max_tokens)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    squares, outer, same_as, tokens = input_sums(model, rows, batch, full=moments is not None)
    head = model.get_output_embeddings()
    if head is None or head.weight.shape[1] != squares[HEAD].shape[0]:
        raise EdgeftError("the model's output head does not take the decoder's hidden states", file=model_dir)
    info = {"records": len(rows), "tokens": tokens, "tensors": len(squares), "text": str(records)}
    if moments is not None:
        with atomic_path(moments) as tmp:  # a shared input's moments once, under its first weight's name
            save_file({name: (s / tokens).float().numpy() for name, s in outer.items() if name not in same_as}, str(tmp),
                      metadata={**{k: str(v) for k, v in info.items()}, "same_as": json.dumps(same_as)})
    means = {name: (s / tokens).float().numpy().astype(np.float32) for name, s in squares.items()}
    with atomic_path(out) as tmp:
        save_file(means, str(tmp), metadata={k: str(v) for k, v in info.items()})
    return {**info, "moments": moments is not None, "seconds": round(time.perf_counter() - started, 2)}


def _prefix(model, decoder) -> str:
    """The decoder's own name inside the causal LM ("model"), so hooked names are the checkpoint's."""
    return next(n for n, m in model.named_modules() if m is decoder)


def load(path: Path) -> dict[str, "Any"]:
    """The importance vectors of a file `collect` wrote, by HF weight name."""
    from safetensors.numpy import load_file

    return load_file(str(path))
