"""`edgeft build --target onnx` end to end on the embedded default model (slow)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_build_onnx_int4_default_model(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--target", "onnx", "--out", str(out)])
    # 1 is a failed budget line (TTFT depends on the machine); anything else is a failure.
    assert result.exit_code in (0, 1), result.output
    folder = out / "model-onnx-int4"
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()}
    bench = json.loads((out / "bench.json").read_text())
    package = {b["budget"]: b for b in bench["budget"]}["package_mb"]
    assert package["status"] == "PASS" and package["value"] < 120  # int4 of 135M parameters: ~90 MB
    manifest = json.loads((out / "manifest.json").read_text())
    check = manifest["stages"]["export_check"]
    assert check["token_mismatches"] == 0 and check["eos_matches"] and check["chat_template_matches"]
    assert bench["metrics"]["decode_tok_s_p50"] > 0
