"""Templating and the prompt mask: labels are -100 exactly on prompt (and padding) tokens."""

from __future__ import annotations

import copy

import pytest

from edgeft.data.tokenize import IGNORE_INDEX, Encoded, Templater, pack_examples, pad_example, pad_token_id

PAIRS = [("What is the capital of France?", "Paris.", None),
         ("天气很好，我们去公园散步吧？", "好的，我们走吧。", None),
         ("Summarize: small models run on phones.", "Phones run small models.", "Answer in one sentence.")]


def _ids(enc) -> list[int]:
    return list(enc["input_ids"]) if not isinstance(enc, list) else enc


def _chat_ids(tok, messages, **kw) -> list[int]:
    return _ids(tok.apply_chat_template(messages, tokenize=True, **kw))


def _messages(inp, system):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": inp}]


def _check_mask(tok, example, inp, target, system, max_length):
    """The prompt is exactly the template's generation prompt; the rest is exactly the assistant turn."""
    prompt = _chat_ids(tok, _messages(inp, system), add_generation_prompt=True)
    full = _chat_ids(tok, _messages(inp, system) + [{"role": "assistant", "content": target}])
    n = sum(example["attention_mask"])
    assert example["input_ids"][:n] == full
    assert example["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert example["labels"][len(prompt):n] == full[len(prompt):]
    assert IGNORE_INDEX not in example["labels"][len(prompt):n]
    assert example["labels"][n:] == [IGNORE_INDEX] * (max_length - n)
    assert example["attention_mask"] == [1] * n + [0] * (max_length - n)
    assert len(example["input_ids"]) == max_length
    learned = tok.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    assert learned.startswith(target) and tok.eos_token in learned


def test_chat_template_mask_is_exact(tok):
    t = Templater(tok, "unused {input}")
    assert t.chat
    for (inp, target, system), enc in zip(PAIRS, t.encode_pairs(PAIRS)):
        _check_mask(tok, pad_example(enc, 96, pad_token_id(tok)), inp, target, system, 96)


def test_plain_format_without_chat_template(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    t = Templater(plain, "### Input:\n{input}\n\n### Response:\n")
    assert not t.chat
    (enc,) = t.encode_pairs([("Name a blue fruit.", "Blueberry.", None)])
    assert plain.decode(enc.prompt_ids) == "### Input:\nName a blue fruit.\n\n### Response:\n"
    assert plain.decode(enc.target_ids) == "Blueberry." + plain.eos_token
    ex = pad_example(enc, 64, pad_token_id(plain))
    assert ex["labels"][: len(enc.prompt_ids)] == [IGNORE_INDEX] * len(enc.prompt_ids)
    assert ex["labels"][len(enc.prompt_ids): enc.n_tokens] == enc.target_ids


def test_a_cut_target_is_learned_without_the_end_of_its_turn(tok):
    """A teacher answer its token budget cut short is trained as the text it is, not as a whole turn:
    otherwise the model learns to stop in mid-sentence."""
    t = Templater(tok, "unused {input}")
    inp, target = "Give me three tips for studying.", "1. **Set a study space**: a quiet desk helps you"
    whole, cut = t.encode_pairs([(inp, target, None)] * 2, ends=[True, False])
    assert cut.prompt_ids == whole.prompt_ids
    assert whole.target_ids[: len(cut.target_ids)] == cut.target_ids and len(cut.target_ids) < len(whole.target_ids)
    assert tok.decode(cut.target_ids) == target
    assert tok.eos_token_id not in cut.target_ids and tok.eos_token_id in whole.target_ids

    plain = copy.deepcopy(tok)
    plain.chat_template = None
    (enc,) = Templater(plain, "### Input:\n{input}\n\n### Response:\n").encode_pairs([(inp, target, None)], ends=[False])
    assert plain.decode(enc.target_ids) == target


def test_pack_keeps_examples_whole_and_masks():
    encs = [Encoded([1, 2, 3], [4, 5]), Encoded([6, 7], [8]), Encoded([9] * 4, [10, 11, 12])]
    rows = pack_examples(encs, max_length=8, pad_id=0)
    assert [r["input_ids"] for r in rows] == [[1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9, 10, 11, 12, 0]]
    assert rows[0]["labels"] == [-100, -100, -100, 4, 5, -100, -100, 8]
    assert rows[1]["labels"] == [-100] * 4 + [10, 11, 12, -100]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert rows[1]["attention_mask"] == [1] * 7 + [0]


@pytest.mark.slow
def test_default_model_chat_template_mask_is_exact():
    """SmolLM2's template injects a default system prompt; the mask must still fall exactly on the boundary."""
    from edgeft import models

    tok = models.load_tokenizer(models.resolve("default"))
    t = Templater(tok, "unused {input}")
    for (inp, target, system), enc in zip(PAIRS, t.encode_pairs(PAIRS)):
        _check_mask(tok, pad_example(enc, 160, pad_token_id(tok)), inp, target, system, 160)
    for (_, target, _), whole, cut in zip(PAIRS, t.encode_pairs(PAIRS), t.encode_pairs(PAIRS, ends=[False] * len(PAIRS))):
        assert tok.decode(cut.target_ids) == target and whole.target_ids[: len(cut.target_ids)] == cut.target_ids
        assert tok.eos_token_id not in cut.target_ids and tok.eos_token_id in whole.target_ids
