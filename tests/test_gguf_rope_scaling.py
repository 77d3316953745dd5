"""Llama 3.x rope scaling survives conversion, however transformers wrote the config (issue 16).

transformers 5 saves `rope_scaling` as `rope_parameters`; a converter that reads only the old key
drops the scaling without a word. The model here has sharp attention and a short original
context, so a missing scaling shows at long positions as a logit error well above tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeft.backends.gguf.backend import LlamaCppRunner
from edgeft.backends.gguf.convert import convert
from edgeft.errors import UnsupportedArchitecture
from tiny_models import make_tokenizer

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def _llama3_model(out, *, scaling=LLAMA3):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_theta=500000.0, rope_scaling=dict(scaling), tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.normal_(0, 0.1)  # attention sharp enough that a wrong rotary frequency changes the output
            elif "norm" not in name:
                p.normal_(0, 0.08)
    model.save_pretrained(out)
    return out


def _ids(n: int) -> list[int]:
    g = np.random.default_rng(0)
    return [int(i) for i in g.integers(3, 300, size=n)]


def test_transformers_5_writes_rope_parameters(tmp_path):
    config = json.loads((_llama3_model(tmp_path / "m") / "config.json").read_text())
    assert config.get("rope_parameters", {}).get("rope_type") == "llama3" or config.get("rope_scaling", {}).get("rope_type") == "llama3"


def _rel_error(model_dir, gguf_path, ids, context: int = 1024) -> float:
    from transformers import AutoModelForCausalLM

    runner = LlamaCppRunner(gguf_path, threads=1, context=context)
    try:
        got = runner.logits(ids)
    finally:
        runner.close()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_llama3_scaling_matches_transformers_at_long_positions(tmp_path, monkeypatch):
    from gguf import GGUFReader

    from edgeft.backends.gguf import arch

    model_dir = _llama3_model(tmp_path / "m")
    ids = _ids(700)
    out = convert(model_dir, tmp_path / "m.gguf", "f32")
    assert "rope_freqs.weight" in {t.name for t in GGUFReader(out).tensors}
    assert _rel_error(model_dir, out, ids) <= 1e-3
    # the same model converted without its scaling (the old behaviour) is far off: the test can tell
    monkeypatch.setattr(arch.LlamaFamily, "extra_tensors", lambda self: [])
    unscaled = convert(model_dir, tmp_path / "unscaled.gguf", "f32")
    assert _rel_error(model_dir, unscaled, ids) > 0.1


def test_an_unknown_rope_type_is_refused_naming_the_key(tmp_path):
    model_dir = _llama3_model(tmp_path / "m")
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    key = "rope_parameters" if "rope_parameters" in config else "rope_scaling"
    config[key] = {**config[key], "rope_type": "yarn"}
    config_path.write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture) as err:
        convert(model_dir, tmp_path / "x.gguf", "f32")
    assert f"{key}: rope scaling type 'yarn' is not supported" in err.value.one_line()
    assert not (tmp_path / "x.gguf").exists()


def _phi3_longrope_model(out, *, original: int = 256, context: int = 1024):
    """A tiny Phi-3 with longrope: sharp attention, and long factors far from the short ones, so that
    either set missing or swapped shows in the logits."""
    from transformers import Phi3Config, Phi3ForCausalLM

    tok = make_tokenizer(out)
    torch.manual_seed(0)
    half = 8  # head_dim 16: eight rotary frequencies
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": original,
            "long_factor": [float(x) for x in np.linspace(1.0, 12.0, half)],
            "short_factor": [float(x) for x in np.linspace(1.0, 1.6, half)]}
    config = Phi3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=context, original_max_position_embeddings=original,
                        rope_parameters=rope, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Phi3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "qkv_proj" in name:
                p.normal_(0, 0.1)
            elif "norm" not in name:
                p.normal_(0, 0.08)
    model.save_pretrained(out)
    return out


def test_phi3_longrope_matches_transformers_with_long_and_short_factors(tmp_path, monkeypatch):
    """Long factors: a 300-token input on a 1,024-token context (both past the original 256). Short
    factors: a 200-token input on a 256-token context (neither past it; llama.cpp rounds a context up
    to 256, so a smaller original could not be tested short). Without the factor tensors the long
    case is far off, so the test can tell."""
    from gguf import GGUFReader

    from edgeft.backends.gguf import arch

    model_dir = _phi3_longrope_model(tmp_path / "m")
    out = convert(model_dir, tmp_path / "m.gguf", "f32")
    reader = GGUFReader(out)
    assert {"rope_factors_long.weight", "rope_factors_short.weight"} <= {t.name for t in reader.tensors}
    attn = float(reader.fields["phi3.rope.scaling.attn_factor"].parts[-1][0])
    assert attn == pytest.approx(float(np.sqrt(1 + np.log(1024 / 256) / np.log(256))), rel=1e-6)
    assert _rel_error(model_dir, out, _ids(300), 1024) <= 1e-3
    assert _rel_error(model_dir, out, _ids(200), 256) <= 1e-3
    monkeypatch.setattr(arch.Phi3Family, "extra_tensors", lambda self: [])
    plain = convert(model_dir, tmp_path / "plain.gguf", "f32")
    assert _rel_error(model_dir, plain, _ids(300), 1024) > 1e-2


def test_phi3_longrope_with_the_wrong_number_of_factors_is_refused_by_key(tmp_path):
    model_dir = _phi3_longrope_model(tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    key = "rope_parameters" if "rope_parameters" in config else "rope_scaling"
    config[key]["long_factor"] = config[key]["long_factor"][:3]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="long_factor") as err:
        convert(model_dir, tmp_path / "bad.gguf", "f32")
    assert f"{key}.long_factor" in str(err.value)
