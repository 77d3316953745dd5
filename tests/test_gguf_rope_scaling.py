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


def _rel_error(model_dir, gguf_path, ids) -> float:
    from transformers import AutoModelForCausalLM

    runner = LlamaCppRunner(gguf_path, threads=1, context=1024)
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
