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
