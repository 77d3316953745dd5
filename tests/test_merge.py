"""LoRA + (dequantized NF4) base -> dense HF folder: same logits as the adapter model, loads and compiles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill_data import write_prepared
from tiny_models import tiny_llama

IDS = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 300, 2]


@pytest.fixture(scope="module", params=[True, False], ids=["nf4-base", "fp32-base"])
def adapter(request, tmp_path_factory):
    from edgeft.distill import DistillConfig, open_data, run

    pytest.importorskip("bitsandbytes")
    root = tmp_path_factory.mktemp("merge")
    t_dir = tiny_llama(root / "teacher", hidden=64, layers=4)
    data = open_data(write_prepared(root / "data", t_dir), str(t_dir), root)
    # a high learning rate so the adapters change the logits far beyond the parity tolerance
    cfg = DistillConfig(student_layers=2, steps=4, batch_size=4, grad_accum=1, lr=5e-2, warmup_steps=0, lora_rank=4, lora_alpha=8,
                        top_k=16, save_every=0, quantize_base=request.param, max_eval_records=4)
    return run(str(t_dir), data, root / "out", cfg)


def _logits(model):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].float().numpy()


def test_merged_logits_match_adapter_model(adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    from edgeft.merge import adapter_model, dense_base, merge, read_adapter_meta

    ref = _logits(adapter_model(adapter))
    meta = read_adapter_meta(adapter)
    base_only = _logits(dense_base(meta["student_dir"], meta["quantized_base"]))
    scale = np.abs(ref).max()
    effect = np.abs(ref - base_only).max() / scale
    for dtype, tol in (("float32", 1e-4), ("float16", 1e-2)):
        # float32: the same products summed in another order, x(W + sBA)^T against xW^T + s(xA^T)B^T;
        # float32 rounding (~6e-8 per operation) over two layers stays far below 1e-4 of the largest
        # logit. float16 rounds every weight to 11 significant bits (~5e-4 relative), which through
        # two layers gives ~1e-3; 1e-2 leaves room without hiding a missing adapter (effect below).
        out = merge(adapter, tmp_path / dtype, dtype)
        merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft, no bitsandbytes
        assert str(merged.dtype) == f"torch.{dtype}"
        rel = np.abs(_logits(merged.float()) - ref).max() / scale
        assert rel <= tol, f"{dtype}: merged vs adapter max relative difference {rel:.2e} > {tol:.0e}"
        assert effect > 10 * tol, f"the adapters change logits by only {effect:.2e}: the test would not see a bad merge"
    files = {p.name for p in (tmp_path / "float16").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any("lora" in k for k in json.dumps(json.loads((tmp_path / "float16" / "config.json").read_text())))


def test_merged_folder_compiles_to_gguf_with_same_logits(adapter, tmp_path):
    from edgeft.backends.gguf import LlamaCppRunner
    from edgeft.backends.gguf_convert import convert
    from edgeft.merge import adapter_model, merge

    out = merge(adapter, tmp_path / "m", "float32")
    gguf = convert(out, tmp_path / "m.gguf", "f32")
    runner = LlamaCppRunner(gguf, threads=1, context=64)
    try:
        got = runner.logits(IDS)
    finally:
        runner.close()
    ref = _logits(adapter_model(adapter))
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert rel <= 1e-3, f"llama.cpp on the merged GGUF vs the adapter model: {rel:.2e}"


def test_merge_rejects_a_folder_that_is_not_an_adapter(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    (tmp_path / "x").mkdir()
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "x"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "adapter_config.json is missing" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
