"""The stages every backend goes through the same way: its own unquantized reference for quality,
`--quant auto` over its levels, `edgeft compile` as the build's compile stage, and an export check
that fails when an artifact records no metadata."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.backends.base import ExportMetadata
from edgeft.cli import main
from edgeft.errors import ParityError
from tiny_models import tiny_profile


def _onnx_profile(tmp_path, quant: str, budget: str = "package_mb = 350"):
    return tiny_profile(tmp_path, backend="onnx", quant=quant, budget=budget, name=f"tiny-onnx-{quant}.toml")


def test_onnx_levels_are_measured_against_the_onnx_fp32_reference(tiny_llama_dir, tmp_path):
    """int8 and int4 report ppl_increase_pct, KL and top-1 against the fp32 export, made once and reused."""
    from edgeft.bench.compare import compare
    from edgeft.config import load_target

    target = load_target(_onnx_profile(tmp_path, "int4"))
    result = compare(str(tiny_llama_dir), [target], {target.name: ["int8", "int4"]}, tmp_path / "cmp")
    rows = {r["quant"]: r for r in result.data["rows"]}
    for quant in ("int8", "int4"):
        m = rows[quant]["metrics"]
        assert m["ppl_increase_pct"] is not None and m["kl_mean"] > 0 and 0 < m["top1_agree_pct"] <= 100
        assert rows[quant]["reference"].endswith("model-onnx-fp32")
    assert rows["int8"]["metrics"]["kl_mean"] < rows["int4"]["metrics"]["kl_mean"]
    assert result.data["references"] == {"onnx": str(tmp_path / "cmp" / "work" / "model-onnx-fp32")}
    assert [p.name for p in (tmp_path / "cmp" / "work").iterdir() if p.name.startswith("model-")] == ["model-onnx-fp32"]


def test_quant_auto_works_for_onnx(tiny_llama_dir, tmp_path):
    """auto benches the ONNX levels from the smallest file up; a size budget only fp32 misses keeps int4."""
    out = tmp_path / "out"
    profile = _onnx_profile(tmp_path, "int4", budget="package_mb = 350\nppl_increase_pct = 1000")
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--model", str(tiny_llama_dir), "--target",
                                       str(profile), "--quant", "auto", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    auto = manifest["stages"]["auto_quant"]
    assert auto["tried"][0]["quant"] == "int4" and auto["kept"] == "model-onnx-int4" and manifest["target"]["quant"] == "int4"
    assert sorted(p.name for p in out.glob("model-onnx-*")) == ["model-onnx-int4"]
    bench = json.loads((out / "bench.json").read_text())
    assert bench["artifact"]["quant"] == "int4" and bench["metrics"]["ppl_increase_pct"] is not None


def test_compile_is_the_builds_compile_stage(tiny_llama_dir, tmp_path):
    """`edgeft compile` runs the export check and writes target.toml and a manifest; no bench."""
    out = tmp_path / "c"
    profile = tiny_profile(tmp_path, quant="q8_0")
    result = CliRunner().invoke(main, ["--quiet", "compile", str(tiny_llama_dir), "--target", str(profile), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["export_check"]["token_mismatches"] == 0
    assert manifest["stages"]["compile"]["quant"] == "q8_0" and manifest["stages"]["compile"]["backend"] == "gguf"
    outputs = {o["path"] for o in manifest["outputs"]}
    assert {"model-q8_0.gguf", "target.toml"} <= outputs and "bench.json" not in outputs
    assert not (out / "bench.json").exists()
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0


class _SilentRunner:
    """A runner whose artifact records nothing about its tokenizer (tokenizes like the source)."""

    def __init__(self, hf_dir):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(hf_dir)

    def tokenize(self, text, *, special=True):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def metadata(self):
        return ExportMetadata(eos_token_id=None, chat_template=None, vocab_size=None)


def test_export_check_fails_when_the_artifact_records_no_metadata(tiny_llama_dir):
    from edgeft.export_check import check_tokenizer_parity

    with pytest.raises(ParityError) as err:
        check_tokenizer_parity(tiny_llama_dir, _SilentRunner(tiny_llama_dir))
    assert "records no EOS id" in str(err.value) and "records no chat template" in str(err.value)


def test_export_check_names_a_wrong_eos_and_vocabulary(tiny_llama_dir):
    from edgeft.export_check import check_tokenizer_parity

    runner = _SilentRunner(tiny_llama_dir)
    runner.metadata = lambda: ExportMetadata(eos_token_id=0, chat_template=runner.tok.chat_template, vocab_size=7)
    with pytest.raises(ParityError) as err:
        check_tokenizer_parity(tiny_llama_dir, runner)
    assert "EOS id differs" in str(err.value) and "vocabulary size differs (7" in str(err.value)


def test_bench_reads_the_level_from_the_artifact(tiny_gguf, tmp_path):
    """`edgeft bench FILE`: the backend says what the file is (its level), not the file name."""
    from edgeft.backends.registry import identify

    renamed = tmp_path / "whatever-name.gguf"
    renamed.write_bytes(tiny_gguf.read_bytes())
    assert identify(renamed) == ("gguf", "f16")
    assert identify(tmp_path) is None
