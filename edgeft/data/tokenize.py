"""Templating and tokenization: prompt tokens masked with -100 so only the target is learned.

With a chat template, the prompt is the template rendered with add_generation_prompt=True for the
user turn (and an optional system turn), and the full text is the template rendered with the
assistant turn added. The target tokens are the tokenization of the rest of the full text, so the
boundary between masked and learned tokens is exact by construction. Without a template a plain
prompt format is used and EOS closes the target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from edgeft.errors import EdgeftError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass
class Encoded:
    prompt_ids: list[int]
    target_ids: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


class Templater:
    """Renders (input, target) pairs into prompt text and target text for one tokenizer."""

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", plain_format: str):
        self.tok = tokenizer
        self.plain_format = plain_format
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def _messages(self, inp: str, system: str | None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": "user", "content": inp}]

    def prompt_text(self, inp: str, system: str | None = None) -> str:
        if not self.chat:
            return self.plain_format.format(input=inp)
        return self.tok.apply_chat_template(self._messages(inp, system), tokenize=False, add_generation_prompt=True)

    def texts(self, inp: str, target: str, system: str | None = None, ends: bool = True) -> tuple[str, str]:
        """(prompt text, target text) whose concatenation is the full training text.

        `ends=False` is a target cut short (a teacher answer stopped at its token budget): it is rendered
        without what closes the turn, so the model is not taught to stop in mid-sentence."""
        prompt = self.prompt_text(inp, system)
        if not self.chat:
            return prompt, target + ((self.tok.eos_token or "") if ends else "")
        full = self.tok.apply_chat_template(
            self._messages(inp, system) + [{"role": "assistant", "content": target}], tokenize=False
        )
        if not full.startswith(prompt):
            raise EdgeftError("the tokenizer's chat template renders the assistant turn in a way that does not extend "
                              "the generation prompt; cannot mask the prompt exactly", place="chat_template")
        turn = full[len(prompt):]
        if ends:
            return prompt, turn
        text = target.strip()
        at = turn.find(text)
        if at < 0:
            raise EdgeftError("the tokenizer's chat template changes the assistant's text; cannot leave the end of the "
                              "turn off a cut-short target", place="chat_template")
        return prompt, turn[: at + len(text)]

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tok(list(texts), add_special_tokens=False)["input_ids"]

    def encode_prompts(self, inputs: Sequence[tuple[str, str | None]]) -> list[list[int]]:
        """Token ids of the prompts alone (for generation and the input-length filter)."""
        return self.encode_texts([self.prompt_text(i, s) for i, s in inputs])

    def encode_pairs(self, pairs: Sequence[tuple[str, str, str | None]],
                     prompt_ids: Sequence[list[int] | None] | None = None,
                     ends: Sequence[bool] | None = None) -> list[Encoded]:
        """`prompt_ids`, when given, are the already tokenized prompt texts (None where unknown);
        `ends`, whether each target ends its answer (`texts`; all do when not given)."""
        ends = list(ends) if ends is not None else [True] * len(pairs)
        rendered = [self.texts(i, t, s, e) for (i, t, s), e in zip(pairs, ends, strict=True)]
        known = list(prompt_ids) if prompt_ids is not None else [None] * len(rendered)
        todo = [k for k, ids in enumerate(known) if ids is None]
        for k, ids in zip(todo, self.encode_texts([rendered[k][0] for k in todo])):
            known[k] = ids
        prompts = known
        targets = self.encode_texts([t for _, t in rendered])
        return [Encoded(p, t) for p, t in zip(prompts, targets)]


def pad_example(enc: Encoded, max_length: int, pad_id: int) -> dict[str, list[int]]:
    ids = enc.prompt_ids + enc.target_ids
    labels = [IGNORE_INDEX] * len(enc.prompt_ids) + list(enc.target_ids)
    n_pad = max_length - len(ids)
    return {"input_ids": ids + [pad_id] * n_pad, "labels": labels + [IGNORE_INDEX] * n_pad,
            "attention_mask": [1] * len(ids) + [0] * n_pad}


def unpadded_example(enc: Encoded) -> dict[str, list[int]]:
    ids = enc.prompt_ids + enc.target_ids
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * len(enc.prompt_ids) + list(enc.target_ids),
            "attention_mask": [1] * len(ids)}


def pack_examples(encs: Sequence[Encoded], max_length: int, pad_id: int) -> list[dict[str, Any]]:
    """Greedy packing of whole examples into rows of max_length (no example is split across rows);
    `position_ids` restart at 0 for every example so a packing-aware model keeps them apart."""
    rows: list[dict[str, Any]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "attention_mask": [], "position_ids": []}

    def flush() -> None:
        n_pad = max_length - len(cur["input_ids"])
        if not cur["input_ids"]:
            return
        rows.append({"input_ids": cur["input_ids"] + [pad_id] * n_pad, "labels": cur["labels"] + [IGNORE_INDEX] * n_pad,
                     "attention_mask": cur["attention_mask"] + [0] * n_pad, "position_ids": cur["position_ids"] + [0] * n_pad})
        for v in cur.values():
            v.clear()

    for enc in encs:
        ex = unpadded_example(enc)
        if len(cur["input_ids"]) + len(ex["input_ids"]) > max_length:
            flush()
        cur["input_ids"] += ex["input_ids"]
        cur["labels"] += ex["labels"]
        cur["attention_mask"] += ex["attention_mask"]
        cur["position_ids"] += list(range(len(ex["input_ids"])))
    flush()
    return rows


def pad_token_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if tid is not None:
            return int(tid)
    return 0
