"""GGUF LoRA adapters (issue 18): a peft adapter exported for llama.cpp, applied at run time on the
base's GGUF, gives the merged model's logits; without it, the base's; switching changes outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeft.backends.gguf.backend import LlamaCppRunner
from edgeft.backends.gguf.convert import convert
from edgeft.backends.gguf.lora import export_lora
from edgeft.errors import ArtifactError, EdgeftError

TEXT_IDS = [5, 17, 42, 99, 7, 250, 31, 64, 12, 3, 77, 150, 201, 9, 55, 18]


def _adapter(base_dir, out, *, seed: int, rslora: bool = False, modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                           "up_proj", "down_proj")):
    """A peft LoRA on the tiny base with both A and B random (a trained adapter's B is not zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(modules), use_rslora=rslora,
                                                  init_lora_weights=False, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    for f in base_dir.iterdir():  # the merged folder converts with the base's tokenizer
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / "merged" / f.name).write_bytes(f.read_bytes())
    return out


def _logits(gguf, ids, adapter=None):
    runner = LlamaCppRunner(gguf, threads=1, context=256)
    try:
        runner.use_adapter(adapter)
        return runner.logits(ids)
    finally:
        runner.close()


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def lora_setup(tiny_llama_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    base = convert(tiny_llama_dir, tmp / "base.gguf", "f32")
    one = _adapter(tiny_llama_dir, tmp / "a1", seed=1)
    two = _adapter(tiny_llama_dir, tmp / "a2", seed=2, rslora=True, modules=("q_proj", "v_proj"))
    for a in (one, two):
        export_lora(a, tiny_llama_dir, a / "adapter.gguf")
        convert(a / "merged", a / "merged.gguf", "f32")
    return base, one, two


@pytest.mark.parametrize("which", ["plain", "rslora-attention-only"])
def test_adapter_on_llama_cpp_gives_the_merged_models_logits(lora_setup, which):
    base, one, two = lora_setup
    a = one if which == "plain" else two
    with_adapter = _logits(base, TEXT_IDS, a / "adapter.gguf")
    merged = _logits(a / "merged.gguf", TEXT_IDS)
    plain = _logits(base, TEXT_IDS)
    assert _rel(with_adapter, merged) < 1e-3  # applied, with peft's scale (alpha/r, or alpha/sqrt(r) for rsLoRA)
    assert _rel(plain, merged) > 1e-2  # and it changes something: an adapter that did nothing would fail above


def test_switching_adapters_in_one_runner_changes_outputs_and_back(lora_setup):
    base, one, two = lora_setup
    runner = LlamaCppRunner(base, threads=1, context=256)
    try:
        plain = runner.logits(TEXT_IDS)
        runner.use_adapter(one / "adapter.gguf")
        first = runner.logits(TEXT_IDS)
        runner.use_adapter(two / "adapter.gguf")
        second = runner.logits(TEXT_IDS)
        runner.use_adapter(None)
        again = runner.logits(TEXT_IDS)
        runner.use_adapter(one / "adapter.gguf")
        first_again = runner.generate(TEXT_IDS, 4).tokens  # the generation context switches too
    finally:
        runner.close()
    assert _rel(first, _logits(one / "merged.gguf", TEXT_IDS)) < 1e-3
    assert _rel(second, _logits(two / "merged.gguf", TEXT_IDS)) < 1e-3
    assert _rel(first, second) > 1e-2 and np.array_equal(plain, again)
    merged_runner = LlamaCppRunner(one / "merged.gguf", threads=1, context=256)
    try:
        assert first_again == merged_runner.generate(TEXT_IDS, 4).tokens
    finally:
        merged_runner.close()


def test_gguf_adapter_metadata_and_tensor_layout(lora_setup, tiny_llama_dir):
    from gguf import GGUFReader

    _, one, _ = lora_setup
    reader = GGUFReader(one / "adapter.gguf")
    field = reader.fields

    def text(key):
        return bytes(field[key].parts[-1]).decode()

    assert text("general.type") == "adapter" and text("adapter.type") == "lora"
    assert float(field["adapter.lora.alpha"].parts[-1][0]) == 8.0
    names = {t.name for t in reader.tensors}
    layers = json.loads((tiny_llama_dir / "config.json").read_text())["num_hidden_layers"]
    assert len(names) == layers * 7 * 2 and "blk.0.attn_q.weight.lora_a" in names and "blk.0.ffn_down.weight.lora_b" in names


def test_bad_adapters_are_one_line_errors(lora_setup, tiny_model_dirs, tmp_path):
    base, one, _ = lora_setup
    with pytest.raises(EdgeftError, match="no adapter_model.safetensors"):
        export_lora(tmp_path, tiny_model_dirs["LlamaForCausalLM"], tmp_path / "x.gguf")
    # an adapter for another base: a Qwen3 256 wide, its matrices the wrong shape for this base
    other = _adapter(tiny_model_dirs["Qwen3ForCausalLM"], tmp_path / "other", seed=3)
    export_lora(other, tiny_model_dirs["Qwen3ForCausalLM"], tmp_path / "other.gguf")
    runner = LlamaCppRunner(base, threads=1, context=256)
    try:
        with pytest.raises(ArtifactError, match="cannot load this LoRA adapter"):
            runner.use_adapter(tmp_path / "other.gguf")
    finally:
        runner.close()
    assert not (tmp_path / "x.gguf").exists()
