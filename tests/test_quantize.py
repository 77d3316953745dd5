"""llama.cpp quantization: every registered level produces a loadable file with unchanged metadata."""

from __future__ import annotations

import pytest

from edgeft.backends.gguf import FTYPES, UNQUANTIZED
from edgeft.backends.gguf.backend import LlamaCppRunner, quantize
from edgeft.backends.registry import quant_levels

QUANTIZED = [q for q in quant_levels("gguf") if q not in UNQUANTIZED]
CARRIED_KEYS = ["tokenizer.ggml.pre", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "llama.block_count", "llama.context_length"]


def test_every_registered_level_has_an_ftype():
    assert set(quant_levels("gguf")) == set(FTYPES)


@pytest.mark.parametrize("level", QUANTIZED)
def test_quantized_file_keeps_metadata_and_runs(level, tiny_gguf, tmp_path):
    from gguf import GGUFReader

    out = quantize(tiny_gguf, tmp_path / f"m-{level}.gguf", level)
    src, dst = GGUFReader(tiny_gguf).fields, GGUFReader(out).fields
    for key in CARRIED_KEYS:
        assert dst[key].contents() == src[key].contents(), key
    assert dst["tokenizer.ggml.tokens"].contents() == src["tokenizer.ggml.tokens"].contents()
    assert dst["general.file_type"].contents() == FTYPES[level]
    assert out.stat().st_size < tiny_gguf.stat().st_size
    runner = LlamaCppRunner(out, threads=1, context=64)
    try:
        gen = runner.generate(runner.tokenize("Hello world"), 4)
        assert len(gen.tokens) == 4
    finally:
        runner.close()


def test_failed_quantization_leaves_no_file(tmp_path):
    from edgeft.errors import ArtifactError

    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ArtifactError) as err:
        quantize(bogus, tmp_path / "out.gguf", "q8_0")
    # the reason llama.cpp logged, not only its return code (its log is muted on success)
    assert "return code" in str(err.value) and "gguf" in str(err.value).split("return code", 1)[1].lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.gguf"]
