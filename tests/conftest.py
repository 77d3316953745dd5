"""Shared fixtures: tiny seeded models built in the test session, never downloaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["tmp_folders"]  # module_tmp

from tiny_models import make_tokenizer, tiny_gemma3, tiny_llama, tiny_mistral, tiny_phi3, tiny_qwen2, tiny_qwen3  # noqa: E402

BUILDERS = {"LlamaForCausalLM": tiny_llama, "Qwen2ForCausalLM": tiny_qwen2, "Qwen3ForCausalLM": tiny_qwen3,
            "MistralForCausalLM": tiny_mistral, "Phi3ForCausalLM": tiny_phi3, "Gemma3ForCausalLM": tiny_gemma3}


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny model per registered architecture family (tests fail if a family has no builder)."""
    from edgeft.backends.gguf.arch import FAMILIES

    out = {}
    for name in FAMILIES:
        assert name in BUILDERS, f"no tiny-model builder for registered architecture {name}"
        # A neutral folder name for Phi-3: llama.cpp's vocabulary loader treats a model whose name says
        # Phi-3 as the real one and looks up Phi-3's own special tokens, which a tiny tokenizer lacks.
        out[name] = BUILDERS[name](tmp_path_factory.mktemp(name.replace("Phi3", "Fused")))
    return out


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    """A tiny trained byte-level BPE tokenizer with a chat template (the data-stage tests' tokenizer)."""
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["LlamaForCausalLM"]


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama as an f16 GGUF, for tests of things downstream of conversion."""
    from edgeft.backends.gguf.convert import convert

    return convert(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", "f16")
