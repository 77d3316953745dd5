"""Our HF -> GGUF converter: llama.cpp must compute what transformers computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeft.backends.gguf.backend import LlamaCppRunner
from edgeft.backends.gguf.arch import FAMILIES
from edgeft.backends.gguf.convert import convert

TEXTS = ["The quick brown fox 123 天气 🙂", "def add(a, b):\n    return a + b", "   spaces\n\nand <|im_start|> specials"]
TOLERANCE = {"f32": 1e-3, "f16": 2e-2, "bf16": 5e-2}
# Gemma 3's GELU runs through ggml's fp16 lookup table and its (1 + w) norms and sqrt(hidden) embedding
# scale amplify it: the tiny model measures 1.04e-3 at f32 (5.7e-4 with an f32 KV cache), where a
# conversion error (a norm without its + 1, a wrong window) measures of order 1.
F32_TOLERANCE = {"Gemma3ForCausalLM": 2e-3}


def _hf_logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("arch", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_logits_match_transformers(arch, dtype, tiny_model_dirs, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tiny_model_dirs[arch]
    out = convert(model_dir, tmp_path / f"m-{dtype}.gguf", dtype)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(" ".join(TEXTS))["input_ids"]
    runner = LlamaCppRunner(out, threads=1, context=256)
    try:
        got = runner.logits(ids)
    finally:
        runner.close()
    ref = _hf_logits(model_dir, ids)
    assert got.shape == ref.shape
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    limit = F32_TOLERANCE.get(arch, TOLERANCE["f32"]) if dtype == "f32" else TOLERANCE[dtype]
    assert rel <= limit, f"{arch} at {dtype}: relative error {rel:.2e} > {limit:.0e}"


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_tokenization_matches_transformers(arch, tiny_model_dirs, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tiny_model_dirs[arch]
    out = convert(model_dir, tmp_path / "m.gguf", "f16")
    tok = AutoTokenizer.from_pretrained(model_dir)
    runner = LlamaCppRunner(out, threads=1, context=256)
    try:
        for text in TEXTS:
            assert runner.tokenize(text) == tok(text, add_special_tokens=False)["input_ids"], text
    finally:
        runner.close()


def test_untied_llama_writes_output_tensor(tmp_path):
    """An untied head must be written as output.weight and used: logits still match."""
    from gguf import GGUFReader
    from tiny_models import tiny_llama

    model_dir = tiny_llama(tmp_path / "untied", tie=False)
    out = convert(model_dir, tmp_path / "u.gguf", "f32")
    names = {t.name for t in GGUFReader(out).tensors}
    assert "output.weight" in names
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(TEXTS[0])["input_ids"]
    runner = LlamaCppRunner(out, threads=1, context=128)
    try:
        got = runner.logits(ids)
    finally:
        runner.close()
    ref = _hf_logits(model_dir, ids)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= TOLERANCE["f32"]


def test_tokenizer_metadata(tiny_llama_dir, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    out = convert(tiny_llama_dir, tmp_path / "m.gguf", "f16")
    fields = GGUFReader(out).fields
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id
    assert fields["tokenizer.ggml.bos_token_id"].contents() == tok.bos_token_id
    assert fields["tokenizer.chat_template"].contents() == tok.chat_template
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[tok.convert_tokens_to_ids("<|im_end|>")] == 3  # control
    assert len(fields["tokenizer.ggml.tokens"].contents()) == len(tok)


def test_padded_vocabulary_gets_unused_entries(tiny_model_dirs, tmp_path):
    """Qwen2 pads its embedding beyond the tokenizer; llama.cpp needs a token entry per row."""
    from gguf import GGUFReader

    out = convert(tiny_model_dirs["Qwen2ForCausalLM"], tmp_path / "q.gguf", "f16")
    fields = GGUFReader(out).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert tokens[-1].startswith("[PAD") and types[-1] == 5
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
