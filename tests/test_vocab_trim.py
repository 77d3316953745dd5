"""Vocabulary trimming on tiny models: the task's text tokenizes identically up to renumbering,
other text still encodes (and decodes back), the trimmed model's logits are the full model's at
the kept ids, and llama.cpp reads the trimmed tokenizer as transformers does."""

from __future__ import annotations

import json

import pytest
import torch

from edgeft import vocab_trim
from tiny_models import CORPUS

TASK = [t for t in dict.fromkeys(CORPUS) if "def " in t or "Edge" in t or "quick" in t]
OTHER = ["Hello, world! How are you today?", "天气很好，机器学习。", "café über 東京 🙂", "Zebra xylophone 42 quartz!"]


def _trim(model_dir, tmp_path):
    from transformers import AutoTokenizer

    full = AutoTokenizer.from_pretrained(model_dir)
    seen = {i for t in TASK for i in full(t, add_special_tokens=False)["input_ids"]}
    kept = vocab_trim.closure(vocab_trim.read_tokenizer(model_dir), seen)
    record = vocab_trim.trim_model(model_dir, vocab_trim.read_tokenizer(model_dir), kept, tmp_path / "trimmed")
    return full, AutoTokenizer.from_pretrained(tmp_path / "trimmed"), kept, record


@pytest.fixture(params=["LlamaForCausalLM", "Gemma3ForCausalLM"], ids=["byte-level", "sentencepiece"])
def trimmed(request, tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs[request.param]
    return (model_dir, *_trim(model_dir, tmp_path))


def test_task_text_tokenizes_identically_up_to_renumbering(trimmed):
    model_dir, full, trim, kept, record = trimmed
    assert vocab_trim.check_same(full, trim, kept, TASK) > 0
    assert record["kept_vocab"] == len(kept) == len(trim) < len(full)
    assert record["source_vocab"] == json.loads((model_dir / "config.json").read_text())["vocab_size"]


def test_text_outside_the_kept_set_still_encodes_and_decodes(trimmed):
    _, full, trim, kept, _ = trimmed
    for text in OTHER:
        ids = trim(text, add_special_tokens=False)["input_ids"]
        assert trim.unk_token_id not in ids  # bytes, never the unknown token
        assert trim.decode(ids) == full.decode(full(text, add_special_tokens=False)["input_ids"])
    # a trimmed vocabulary splits unseen words into more, smaller pieces: the trim really dropped something
    assert sum(len(trim(t, add_special_tokens=False)["input_ids"]) for t in OTHER) > \
        sum(len(full(t, add_special_tokens=False)["input_ids"]) for t in OTHER)


def test_renumbered_full_ids_are_the_trimmed_ids_on_task_text_and_the_same_text_elsewhere(trimmed):
    """Distillation data tokenized before the trim: kept text maps exactly onto the trimmed
    tokenizer's ids; a dropped token becomes kept pieces (bytes at worst) of the same text."""
    model_dir, full, trim, kept, _ = trimmed
    renumber = vocab_trim.Renumber(vocab_trim.read_tokenizer(model_dir), kept)

    def mapped(text):
        return [new for old in full(text, add_special_tokens=False)["input_ids"] for new in renumber(old)]

    for text in TASK:
        assert mapped(text) == trim(text, add_special_tokens=False)["input_ids"]
    dropped = 0
    for text in OTHER:
        ids = mapped(text)
        assert max(ids) < len(kept) and trim.decode(ids) == full.decode(full(text, add_special_tokens=False)["input_ids"])
        dropped += len(ids) - len(full(text, add_special_tokens=False)["input_ids"])
    assert dropped > 0  # some of OTHER's tokens were dropped and re-encoded


def test_special_ids_and_the_chat_template_survive(trimmed):
    _, full, trim, kept, _ = trimmed
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(trim, name) == getattr(full, name)
        assert kept[getattr(trim, f"{name}_id")] == getattr(full, f"{name}_id")
    messages = [{"role": "user", "content": TASK[0]}]
    assert trim.apply_chat_template(messages, tokenize=False) == full.apply_chat_template(messages, tokenize=False)


def test_trimmed_logits_are_the_full_models_at_the_kept_ids(trimmed, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir, full, trim, kept, _ = trimmed
    ids = trim(TASK[0], add_special_tokens=False)["input_ids"]
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "trimmed", dtype=torch.float32).eval()
    big = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert small.config.vocab_size == len(kept)
    assert small.config.eos_token_id == kept.index(big.config.eos_token_id)
    with torch.no_grad():
        got = small(torch.tensor([ids])).logits[0]
        want = big(torch.tensor([[kept[i] for i in ids]])).logits[0][:, kept]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_every_kept_token_is_reachable_through_kept_merges(tiny_model_dirs):
    """The closure property itself: BPE on each kept token's string, with only the kept merges,
    ends in that token (else the trimmed tokenizer could never produce it)."""
    model_dir = tiny_model_dirs["LlamaForCausalLM"]
    data = vocab_trim.read_tokenizer(model_dir)
    kept = vocab_trim.first_n(data, 300)
    assert len(kept) == 300
    trimmed = vocab_trim.trimmed_tokenizer(data, kept)
    vocab = trimmed["model"]["vocab"]
    ranks = {tuple(m): r for r, m in reversed(list(enumerate(trimmed["model"]["merges"])))}
    added = {a["content"] for a in trimmed["added_tokens"]}
    for token in vocab:
        if token not in added:
            assert vocab_trim.bpe_pieces(token, ranks)[-1] == token


def test_too_few_tokens_for_the_bytes_is_refused(tiny_model_dirs):
    from edgeft.errors import EdgeftError

    with pytest.raises(EdgeftError, match="byte, character and special tokens"):
        vocab_trim.first_n(vocab_trim.read_tokenizer(tiny_model_dirs["LlamaForCausalLM"]), 10)


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Gemma3ForCausalLM"], ids=["byte-level", "sentencepiece"])
def test_llama_cpp_reads_the_trimmed_tokenizer_as_transformers_does(arch, tiny_model_dirs, tmp_path):
    from edgeft.backends.gguf.backend import LlamaCppRunner
    from edgeft.backends.gguf.convert import convert

    model_dir = tiny_model_dirs[arch]
    _, trim, _, _ = _trim(model_dir, tmp_path)
    out = convert(tmp_path / "trimmed", tmp_path / "t.gguf", "f32")
    runner = LlamaCppRunner(out, threads=1, context=256)
    try:
        for text in TASK + OTHER:
            assert runner.tokenize(text, special=False) == trim(text, add_special_tokens=False)["input_ids"], text
    finally:
        runner.close()


@pytest.mark.parametrize("backend_name,profile", [("gguf", "gguf-f16"), ("onnx", "onnx-fp32")])
def test_every_backend_runs_the_trimmed_model_through_the_backend_interface(backend_name, profile, tiny_model_dirs, tmp_path):
    """A trimmed folder is an HF folder like any other: each backend's unquantized export of it has
    the kept vocabulary, tokenizes the task text to the trimmed ids, and gives the trimmed model's
    logits (which are the full model's at the kept ids)."""
    from transformers import AutoModelForCausalLM

    from edgeft.backends.registry import get_backend
    from edgeft.config import load_target

    model_dir = tiny_model_dirs["LlamaForCausalLM"]
    _, trim, kept, _ = _trim(model_dir, tmp_path)
    backend = get_backend(backend_name)
    target = load_target(profile).with_overrides(threads=1)
    runner = backend.load(backend.reference(tmp_path / "trimmed", target, tmp_path / "ref", name="trimmed"), target)
    try:
        ids = trim(TASK[0], add_special_tokens=False)["input_ids"]
        assert runner.tokenize(TASK[0], special=False) == ids
        got = runner.logits(ids)
    finally:
        runner.close()
    full = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = full(input_ids=torch.tensor([[kept[i] for i in ids]])).logits[0][:, kept].numpy()
    assert got.shape == want.shape == (len(ids), len(kept))
    assert abs(got - want).max() / abs(want).max() < 2e-2  # f16 weights for GGUF's reference, fp32 for ONNX


def test_trim_data_keeps_every_records_text_not_only_the_answered_ones(tiny_model_dirs, tmp_path):
    """The data stage's teacher answers only up to a preset's cap; the trim still keeps the text of
    every record (its templated prompt) and every human target."""
    from transformers import AutoTokenizer

    from edgeft.data.prepare import DataConfig
    from edgeft.data.tokenize import Templater

    model_dir = tiny_model_dirs["LlamaForCausalLM"]
    rows = [{"input": f"Question number {w} about the {w} river?"} for w in ("quartz", "falcon", "ember", "walnut")]
    rows.append({"input": "Name a quiet lantern.", "target": "A velvet lantern glows."})
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DataConfig(eval_fraction=0.0, min_input_tokens=1, min_target_tokens=1)
    ids = vocab_trim.data_token_ids(data, model_dir, config)
    tok = AutoTokenizer.from_pretrained(model_dir)
    templater = Templater(tok, config.plain_format)
    for r in rows:
        assert templater.encode_prompts([(r["input"], None)])[0] in ids
    assert tok(rows[-1]["target"], add_special_tokens=False)["input_ids"] in ids
    assert len(ids) == len(rows) + 1


def test_an_evaluation_file_in_full_ids_is_renumbered_and_a_bad_one_is_one_line(trimmed, tmp_path):
    from edgeft.errors import EdgeftError

    model_dir, full, trim, kept, _ = trimmed
    src = tmp_path / "eval.jsonl"
    src.write_text("".join(json.dumps({"input_ids": full(t, add_special_tokens=False)["input_ids"]}) + "\n" for t in TASK + OTHER))
    out = vocab_trim.renumber_eval_file(src, tmp_path / "eval-trimmed.jsonl", tmp_path / "trimmed")
    rows = [json.loads(line)["input_ids"] for line in out.read_text().splitlines()]
    assert rows[: len(TASK)] == [trim(t, add_special_tokens=False)["input_ids"] for t in TASK]
    for ids, text in zip(rows, TASK + OTHER):
        assert max(ids) < len(kept) and trim.decode(ids) == full.decode(full(text, add_special_tokens=False)["input_ids"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2]}\n{"text": "no ids"}\n')
    with pytest.raises(EdgeftError, match="line 2"):
        vocab_trim.renumber_eval_file(bad, tmp_path / "bad-trimmed.jsonl", tmp_path / "trimmed")
    assert not (tmp_path / "bad-trimmed.jsonl").exists()


def test_the_source_answer_of_a_trimmed_build_is_the_full_models_own(trimmed, tmp_path):
    """The side-by-side 'source' answer is the model you gave answering the prompt as its own
    tokenizer splits it, not the trimmed pieces of that prompt."""
    from edgeft.bench.source_model import SourceRunner

    model_dir, *_ = trimmed
    full, trim = SourceRunner(model_dir), SourceRunner(tmp_path / "trimmed")
    prompt = OTHER[0]
    assert trim.own_chat_ids(prompt) == full.own_chat_ids(prompt) != [trim.kept[i] for i in trim.chat_ids(prompt)]
    assert trim.answer(trim.greedy(trim.own_chat_ids(prompt), 8)) == full.answer(full.greedy(full.own_chat_ids(prompt), 8))


def test_quality_of_a_trimmed_artifact_is_the_same_text_against_the_source_on_its_own_tokens(trimmed, tmp_path):
    """Same-ids perplexity hides a trim's cost (the source fed the split pieces suffers too); the
    budget's `ppl_vs_source_pct` compares the text's likelihood, each model on its own tokens: never
    worse on text the trim kept whole, worse where words were split."""
    import shutil

    from edgeft.bench.perplexity import score
    from edgeft.bench.source_model import SourceRunner

    plain = tmp_path / "artifact"  # the trimmed model as an artifact would run it: no map, its own vocabulary
    shutil.copytree(tmp_path / "trimmed", plain)
    (plain / vocab_trim.MAP_NAME).unlink()
    artifact, source = SourceRunner(plain), SourceRunner(tmp_path / "trimmed")
    kept_text = score(artifact, artifact.tokenize(" ".join(TASK)), 64, None, source)
    assert kept_text["ppl_vs_source_pct"] <= 1e-6  # the kept ids' logits are the source's, renormalised
    assert kept_text["source_tokens_scored"] == kept_text["tokens_scored"]
    split = score(artifact, artifact.tokenize(" ".join(OTHER * 4)), 64, None, source)
    assert split["source_tokens_scored"] < split["tokens_scored"]
    assert split["ppl_vs_source_pct"] > 0 >= split["ppl_vs_source_same_ids_pct"]
