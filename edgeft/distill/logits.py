"""Logits at the target positions only: the head applied where a token is scored, not everywhere.

Why: the output head is a vocabulary-wide matmul (49,152 x 576 on the default model, about a
fifth of its weights), and a causal LM applies it at every position, prompt and padding included,
though only the target positions are scored or trained. Running the decoder, then the head on
the selected rows alone, gives the same rows for a fraction of that cost, in training (forward and
backward), evaluation, the teacher cache and the layer pick (benchmarks/README.md has the
timings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeft.distill.records import IGNORE

if TYPE_CHECKING:
    import torch


def _cache_arg(decoder) -> str:
    """transformers 5 renames the decoders' `past_key_values` argument to `cache`, family by family."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def is_prefix(model) -> bool:
    """A peft model with a prefix-tuning adapter active."""
    config = getattr(model, "active_peft_config", None)
    return config is not None and str(getattr(config, "peft_type", "")).endswith("PREFIX_TUNING")


def _parts(model) -> tuple[Any, Any, float | None]:
    """The decoder, the output head and the final logit soft-cap of an HF causal LM, through a PEFT wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model, inner.get_output_embeddings(), getattr(inner.config, "final_logit_softcapping", None)


def target_logits(model, batch: dict, *, inputs_embeds: "torch.Tensor | None" = None,
                  output_hidden_states: bool = False) -> tuple["torch.Tensor", Any]:
    """The logits [n, vocab] at the positions where `batch["targets"]` scores a token, in (record,
    position) order, exactly as `model(...).logits[targets != -100]`; and the decoder's output
    (for its hidden states). `inputs_embeds` replaces the token ids as the decoder's input."""
    import torch

    decoder, head, cap = _parts(model)
    feed = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": batch["input_ids"]}
    mask = batch["attention_mask"]
    if is_prefix(model):  # the learned keys and values go before every record, as peft's own forward puts them
        feed[_cache_arg(decoder)] = model.get_prompt(batch_size=mask.shape[0])
        mask = torch.cat([torch.ones(mask.shape[0], model.active_peft_config.num_virtual_tokens, dtype=mask.dtype), mask], 1)
    out = decoder(**feed, attention_mask=mask, output_hidden_states=output_hidden_states, use_cache=False)
    logits = head(out.last_hidden_state[batch["targets"] != IGNORE])
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, out
