"""LoRA + (dequantized NF4) base -> dense HF folder: same logits as the adapter model, loads and compiles."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from distill_data import write_prepared
from tiny_models import tiny_llama

IDS = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 300, 2]


@pytest.fixture(scope="module", params=["bitsandbytes", "torchao", None], ids=["nf4-bnb-base", "nf4-torchao-base", "fp32-base"])
def adapter(request, tmp_path_factory):
    from edgeft.distill import DistillConfig, open_data, run

    if request.param is not None:
        pytest.importorskip(request.param)
    root = tmp_path_factory.mktemp("merge")
    t_dir = tiny_llama(root / "teacher", hidden=64, layers=4)
    data = open_data(write_prepared(root / "data", t_dir), str(t_dir), root)
    # a high learning rate so the adapters change the logits far beyond the parity tolerance
    cfg = DistillConfig(student_layers=2, steps=4, batch_size=4, grad_accum=1, lr=5e-2, warmup_steps=0, lora_rank=4, lora_alpha=8,
                        top_k=16, save_every=0, quantize_base=request.param is not None, nf4_engine=request.param or "auto",
                        max_eval_records=4)
    return run(str(t_dir), data, root / "out", cfg)


def _logits(model):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].float().numpy()


def test_merged_logits_match_adapter_model(adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    from edgeft.merge import adapter_model, dense_base, merge, nf4_engine, read_adapter_meta

    ref = _logits(adapter_model(adapter))
    meta = read_adapter_meta(adapter)
    # the engine that ran is recorded, so merge rebuilds the same 4-bit base
    assert meta["nf4_engine"] == (meta["config"]["nf4_engine"] if meta["quantized_base"] else None)
    base_only = _logits(dense_base(meta["student_dir"], nf4_engine(meta)))
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


def test_merge_needs_the_engine_training_used(adapter):
    """Why the engine is recorded: the adapters on the other engine's dequantized base (or on the
    fp32 weights) miss the adapter model by far more than merge parity allows (1e-4 relative)."""
    from edgeft.distill import qlora
    from edgeft.merge import adapter_model, dense_base, nf4_engine, read_adapter_meta

    meta = read_adapter_meta(adapter)
    engine = nf4_engine(meta)
    if engine is None:
        pytest.skip("an fp32 base has no engine")
    ref = _logits(adapter_model(adapter))
    for other in ("bitsandbytes", "torchao", None):
        if other == engine or (other is not None and importlib.util.find_spec(other) is None):
            continue
        wrong = _logits(qlora.load_adapter(dense_base(meta["student_dir"], other), adapter).merge_and_unload())
        rel = np.abs(wrong - ref).max() / np.abs(ref).max()
        assert rel > 1e-3, f"a {other or 'fp32'} base gives {rel:.2e}: the merge parity test could not tell the engines apart"


def test_merge_rejects_an_unknown_recorded_engine(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    (tmp_path / "a" / "edgeft_adapter.json").write_text(json.dumps({"student_dir": str(tmp_path / "base"), "quantized_base": True,
                                                                     "nf4_engine": "gptq"}))
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "a"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "edgeft_adapter.json: nf4_engine: unknown NF4 engine 'gptq' (known: bitsandbytes, torchao)" in result.output
    assert not (tmp_path / "o").exists()


def test_merged_folder_compiles_to_gguf_with_same_logits(adapter, tmp_path):
    from edgeft.backends.gguf.backend import LlamaCppRunner
    from edgeft.backends.gguf.convert import convert
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
