"""Each registered GGUF family beyond the parity tests: greedy generation token for token, and
K-quants really written for a family at least 256 wide (issue 16)."""

from __future__ import annotations

import pytest
import torch

from edgeft.backends.gguf.arch import FAMILIES
from edgeft.backends.gguf.backend import LlamaCppRunner, quantize
from edgeft.backends.gguf.convert import convert


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_greedy_generation_matches_transformers_at_f32(arch, tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_model_dirs[arch]
    out = convert(model_dir, tmp_path / "m.gguf", "f32")
    ids = AutoTokenizer.from_pretrained(model_dir)("Edge devices run small language models.", add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    runner = LlamaCppRunner(out, threads=1, context=256)
    try:
        assert runner.generate(ids, 32).tokens == want
    finally:
        runner.close()


def test_k_quants_are_written_for_a_256_wide_family(tiny_model_dirs, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    f16 = convert(tiny_model_dirs["Qwen3ForCausalLM"], tmp_path / "q3.gguf", "f16")
    types = {}
    for level in ("q4_k_m", "q2_k", "q3_k_s"):
        path = quantize(f16, tmp_path / f"{level}.gguf", level, threads=1)
        types[level] = {t.tensor_type for t in GGUFReader(path).tensors if t.name.endswith("ffn_up.weight")}
    assert types["q4_k_m"] == {GGMLQuantizationType.Q4_K}
    assert types["q2_k"] != types["q3_k_s"]


def test_embedding_type_option_sets_the_token_table_type(tiny_model_dirs, tmp_path):
    """`[gguf] embedding_type`: the token table (the tied head) at the type asked, the rest at the level's."""
    from gguf import GGMLQuantizationType, GGUFReader

    f16 = convert(tiny_model_dirs["Qwen3ForCausalLM"], tmp_path / "q3.gguf", "f16")
    default = quantize(f16, tmp_path / "default.gguf", "q4_k_m", threads=1)
    smaller = quantize(f16, tmp_path / "q4k.gguf", "q4_k_m", threads=1, embedding_type="q4_0")

    def embd(path):
        return next(t.tensor_type for t in GGUFReader(path).tensors if t.name == "token_embd.weight")

    assert embd(smaller) == GGMLQuantizationType.Q4_0 and embd(default) != GGMLQuantizationType.Q4_0
    assert smaller.stat().st_size < default.stat().st_size


def test_phi3_partial_rotary_matches_transformers(tmp_path):
    """A partial rotary embedding (Phi-4-mini turns 3/4 of each head; here half): f32 logits within 1e-3."""
    import numpy as np

    from test_gguf_rope_scaling import _rel_error
    from tiny_models import tiny_phi3

    model_dir = tiny_phi3(tmp_path / "tiny-fused", partial_rotary_factor=0.5)
    out = convert(model_dir, tmp_path / "m.gguf", "f32")
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 300, size=96)]
    assert _rel_error(model_dir, out, ids) <= 1e-3


@pytest.mark.parametrize("builder,key", [("tiny_phi3", "sliding_window"), ("tiny_mistral", "sliding_window")])
def test_a_sliding_window_llama_cpp_would_ignore_is_refused_naming_the_key(builder, key, tmp_path):
    import json

    import tiny_models
    from edgeft.errors import UnsupportedArchitecture

    model_dir = getattr(tiny_models, builder)(tmp_path / "tiny")
    config = json.loads((model_dir / "config.json").read_text())
    config[key] = 16
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture) as err:
        convert(model_dir, tmp_path / "x.gguf", "f32")
    assert f"{key}: sliding-window attention (16 tokens) is not supported" in err.value.one_line()
    assert not (tmp_path / "x.gguf").exists()


def test_gemma3_sliding_window_and_global_layers_match_transformers_past_the_window(tiny_model_dirs, tmp_path):
    """96 tokens against a 16-token window: the five sliding layers must see only their window and the
    sixth the whole input, each with its own rope base. Bound 2e-3: this six-layer model measures
    about 1.1e-3 everywhere, inside the first window as much as past it and with a window wider
    than the input (llama.cpp keeps its KV cache in f16), while a wrong window measures about 1.0."""
    import numpy as np

    from test_gguf_rope_scaling import _rel_error

    model_dir = tiny_model_dirs["Gemma3ForCausalLM"]
    out = convert(model_dir, tmp_path / "g.gguf", "f32")
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 300, size=96)]
    assert _rel_error(model_dir, out, ids) <= 2e-3


def test_gemma3_configs_llama_cpp_cannot_run_are_refused_by_key(tmp_path):
    import json

    from edgeft.errors import UnsupportedArchitecture
    from tiny_models import tiny_gemma3

    model_dir = tiny_gemma3(tmp_path / "g")
    base = json.loads((model_dir / "config.json").read_text())
    for key, value in (("query_pre_attn_scalar", 7), ("final_logit_softcapping", 30.0),
                       ("layer_types", ["full_attention"] * 6)):
        (model_dir / "config.json").write_text(json.dumps({**base, key: value}))
        with pytest.raises(UnsupportedArchitecture) as err:
            convert(model_dir, tmp_path / "x.gguf", "f32")
        assert f"config.json: {key}:" in err.value.one_line()
    assert not (tmp_path / "x.gguf").exists()


STRINGS = ["The quick brown fox 123 天气 🙂", "def add(a, b):\n    return a + b", "   spaces\n\nand <|im_start|> specials",
           "Émoji 🙂🚀 and accents: café, naïve, über, 東京.", "Hello, world! How are you today?", " leading space", "x",
           "tabs\tand\tnewlines\n", "ÀÉÎÕÜ ß ø Ω ж ع ह", "1234567890 + 0.5 = ?"]


@pytest.mark.parametrize("prepend", [False, True], ids=["gemma-style", "llama2-style"])
def test_sentencepiece_style_tokenizer_matches_transformers(prepend, tmp_path):
    """SentencePiece-style BPE with byte fallback, written as llama.cpp's `llama` tokenizer (scores
    from the merge ranks, <0xXX> byte tokens, a prepended "\u2581" where the normalizer adds one):
    the same ids as transformers on text the merges cover and text only byte fallback can encode."""
    from gguf import GGUFReader

    from tiny_models import make_spm_tokenizer, tiny_llama

    model_dir = tiny_llama(tmp_path / "m", extra_vocab=700)
    tok = make_spm_tokenizer(model_dir, prepend=prepend)
    out = convert(model_dir, tmp_path / "m.gguf", "f16")
    fields = GGUFReader(out).fields
    assert str(fields["tokenizer.ggml.model"].contents()) == "llama"
    assert bool(fields["tokenizer.ggml.add_space_prefix"].contents()) is prepend
    runner = LlamaCppRunner(out, threads=1, context=256)
    try:
        for text in STRINGS:
            assert runner.tokenize(text) == tok(text, add_special_tokens=False)["input_ids"], text
    finally:
        runner.close()


def test_a_k_type_embedding_on_a_narrow_table_is_refused_in_one_line(tiny_llama_dir, tmp_path):
    """llama.cpp cannot write a 64-wide table in 256-weight K blocks and fails without a reason;
    the profile key is named instead, and no file is left under the final name."""
    from edgeft.backends.gguf.backend import GGUFBackend
    from edgeft.config import load_target
    from edgeft.errors import ConfigError
    from edgeft.sweep import compile_one
    from tiny_models import tiny_profile

    profile = tiny_profile(tmp_path, quant="q4_k_m", extra='[gguf]\nembedding_type = "q4_k"\n')
    with pytest.raises(ConfigError) as err:
        compile_one(GGUFBackend(), tiny_llama_dir, load_target(profile), tmp_path / "out")
    assert "gguf.embedding_type: q4_k needs rows of a multiple of 256 weights" in err.value.one_line()
    assert not (tmp_path / "out" / "model-q4_k_m.gguf").exists()
