"""The second real model end to end (slow): Gemma 3 270M (Q4_K_M, from its chunk packages) built
with `--no-distill` for GGUF and ONNX, its export check passing, tokenizer parity on 200+ strings
against the shipped file as llama.cpp reads it, and `compare`'s quant table."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.cli import main

pytestmark = pytest.mark.slow


def _strings() -> list[str]:
    """200+ texts: every line of the shipped evaluation text, the test corpus, and edge cases
    (leading spaces, digits, mixed scripts, markup, specials written as text)."""
    from edgeft.bench.prompt import eval_text
    from tiny_models import CORPUS

    lines = [ln for ln in eval_text().splitlines() if ln.strip()]
    edge = ["", " ", "  leading", "trailing  ", "\n\nnew\nlines\n", "tabs\tand\t\ttabs", "1234567890 3.14159 -42",
            "<start_of_turn>user\nhi<end_of_turn>", "<b>bold</b> &amp; [link](http://x.y)", "ÀÉÎÕÜ àéîõü ß ø",
            "Привет, мир!", "مرحبا بالعالم", "こんにちは世界", "한국어 텍스트", "🙂🚀👍🏽 emoji", "x" * 300,
            "def f(x):\n\treturn x ** 2  # square", "  \u00a0non-breaking\u00a0space", "Zero\u200bwidth"]
    words = ["edge", "model", "quantized", "phone", "latency", "token", "Paris", "study", "CPU", "reply"]
    made = [f"{i}. " + " ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 9)) + ("." if i % 2 else "?")
            for i in range(160)]
    texts = list(dict.fromkeys(lines + list(dict.fromkeys(CORPUS)) + edge + made))
    assert len(texts) >= 200
    return texts


# These two run first, before the module's GGUF build exists: each writes GB of its own, and the
# GGUF build's folder lives until the module ends.
def test_onnx_build_passes_its_export_check(tmp_path):
    out = tmp_path / "out"
    # --no-bench: the export check still runs (it is part of the build); the bench's figures are the GGUF test's
    result = CliRunner().invoke(main, ["build", "--model", "gemma3-270m", "--no-distill", "--no-bench", "--target", "onnx",
                                       "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    check = json.loads((out / "manifest.json").read_text())["stages"]["export_check"]
    assert check["token_mismatches"] == 0 and check["outputs"]["long_input_tokens"] >= 1000
    # what an app ships runs onnxruntime-genai's own tokenizer: it must agree with the source's too
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "work" / "source-hf")
    folder = next(p.parent for p in out.rglob("genai_config.json"))
    genai = og.Tokenizer(og.Model(str(folder)))
    texts = _strings()
    bad = [t for t in texts if [int(i) for i in genai.encode(t)] != tok(t, add_special_tokens=False)["input_ids"]]
    # Measured: onnxruntime-genai 0.18's tokenizer splits long runs without a space differently (2 of
    # 220 here: a 120-character Chinese line and "x" * 300); every other string agrees. README says so.
    assert len(bad) <= 2 and all(len(t) > 100 and " " not in t for t in bad), \
        f"{len(bad)} of {len(texts)} differ in onnxruntime-genai, first {bad[0]!r}"


def test_compare_gives_the_quant_table(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", "--model", "gemma3-270m", "--quant", "q8_0,q4_k_m", "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    data = json.loads((out / "compare.json").read_text())
    rows = {r["quant"]: r for r in data["rows"]}
    assert set(rows) == {"q8_0", "q4_k_m"}
    assert rows["q4_k_m"]["metrics"]["package_mb"] < rows["q8_0"]["metrics"]["package_mb"]
    assert all(r["metrics"]["ppl_vs_source_pct"] is not None for r in rows.values())


@pytest.fixture(scope="module")
def gguf_build(module_tmp):
    out = module_tmp("gemma-gguf") / "out"
    result = CliRunner().invoke(main, ["build", "--model", "gemma3-270m", "--no-distill", "--target", "gguf", "--out", str(out)])
    assert result.exit_code in (0, 1), result.output  # 1: a budget line failed on this machine, which the table says
    return out, result.output


def test_gguf_build_passes_its_export_check_and_reports_against_the_source(gguf_build):
    out, output = gguf_build
    manifest = json.loads((out / "manifest.json").read_text())
    check = manifest["stages"]["export_check"]
    assert check["token_mismatches"] == 0 and check["eos_matches"] and check["chat_template_matches"] and check["vocab_matches"]
    assert check["outputs"]["long_input_tokens"] >= 1000
    bench = json.loads((out / "bench.json").read_text())
    assert bench["metrics"]["source_ppl"] > 0 and bench["metrics"]["kl_vs_source_mean"] > 0
    assert "quality against the source" in output


def test_tokenizer_parity_with_the_shipped_file_on_200_strings(gguf_build):
    from transformers import AutoTokenizer

    from edgeft.backends.gguf.backend import LlamaCppRunner

    out, _ = gguf_build
    tok = AutoTokenizer.from_pretrained(out / "work" / "source-hf")
    shipped = next(out.glob("*.gguf"))
    runner = LlamaCppRunner(shipped, threads=1, context=512)
    try:
        texts = _strings()
        bad = [t for t in texts if runner.tokenize(t) != tok(t, add_special_tokens=False)["input_ids"]]
    finally:
        runner.close()
    assert not bad, f"{len(bad)} of {len(texts)} differ, first {bad[0]!r}"
