"""The 4-bit (NF4) student base: adapters train on either engine (bitsandbytes, torchao), the
engine is chosen as documented, and the bitsandbytes CPU repack trap is guarded."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from distill_data import write_prepared
from tiny_models import tiny_llama

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")


def _batch(tmp_path, t_dir):
    from edgeft.distill.records import collate, read_records

    data = write_prepared(tmp_path / "d", t_dir, n_train=4, n_eval=2)
    recs = read_records(data / "train.jsonl", vocab_size=400, max_length=64)
    return recs, collate(recs, 0)


def _lora_grads(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"])
    out.loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}


@needs_bnb
def test_adapters_keep_receiving_gradients_after_eval_on_4bit_base(tmp_path):
    """Regression: once a bitsandbytes 4-bit model ran a no-grad eval-mode forward on a CPU with
    AVX512-BF16, it repacked its weights and training silently got no gradient. We pretend to be
    such a CPU (the flag bitsandbytes reads) and check that evaluating leaves training intact."""
    from bitsandbytes.nn import Linear4bit

    from edgeft.distill.config import DistillConfig
    from edgeft.distill.evaluate import evaluate
    from edgeft.distill.qlora import add_lora, load_base, packed_layers

    t_dir = tiny_llama(tmp_path / "t", hidden=64)
    base = load_base(t_dir, quantize=True)
    layers = [m for m in base.modules() if isinstance(m, Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)  # the guard is on
    model = add_lora(base, DistillConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0))
    recs, batch = _batch(tmp_path, t_dir)
    first = _lora_grads(model, batch)
    assert first and all(g is not None and g.abs().sum() > 0 for g in first.values())
    evaluate(model, recs, 0, 4)  # eval mode, no grad: the forward that used to repack
    assert packed_layers(model) == 0
    after = _lora_grads(model, batch)
    assert all(g is not None and g.abs().sum() > 0 for g in after.values())


@needs_bnb
def test_training_refuses_a_repacked_base(tmp_path):
    """If something repacked the 4-bit weights anyway, the loop stops instead of training blind."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu
    from bitsandbytes.nn import Linear4bit

    from edgeft.distill.config import DistillConfig
    from edgeft.distill.loop import TrainingError, train
    from edgeft.distill.qlora import add_lora, load_base, packed_layers, unpack

    t_dir = tiny_llama(tmp_path / "t", hidden=64)
    cfg = DistillConfig(lora_rank=4, lora_alpha=8, steps=1, batch_size=2, grad_accum=1, alpha=0.0, save_every=0)
    model = add_lora(load_base(t_dir, quantize=True), cfg)
    m = next(m for m in model.modules() if isinstance(m, Linear4bit))
    try:
        m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu(m.weight.data, m.weight.quant_state)
    except Exception as exc:  # pragma: no cover - depends on the bitsandbytes build
        pytest.skip(f"this bitsandbytes cannot repack on this CPU: {exc}")
    assert packed_layers(model) == 1
    recs, _ = _batch(tmp_path, t_dir)
    with pytest.raises(TrainingError, match="repacked"):
        train(model, recs, None, None, 0, cfg, tmp_path / "ck", resume=False)
    unpack(model)
    assert packed_layers(model) == 0
    log = train(model, recs, None, None, 0, cfg, tmp_path / "ck", resume=False)
    assert log[0]["grad_norm"] > 0


@needs_bnb
def test_4bit_base_is_nf4_and_close_to_fp32(tmp_path):
    import torch

    from edgeft.distill.qlora import dequantized_state, four_bit_layers, load_base

    t_dir = tiny_llama(tmp_path / "t", hidden=64)
    q = load_base(t_dir, quantize=True)
    dense = load_base(t_dir, quantize=False)
    assert all(m.weight.quant_state.quant_type == "nf4" for m in four_bit_layers(q))
    mods = dict(dense.named_modules())
    for name, w in dequantized_state(q).items():
        ref = mods[name].weight
        err = (w.reshape(ref.shape) - ref).abs().max().item()
        # NF4 has 16 levels per 64-weight block scaled by the block's absmax: the error is
        # at most about half the widest gap between levels (~0.15 of absmax)
        assert 0 < err <= 0.16 * ref.abs().max().item(), name
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert not torch.equal(q(input_ids=x).logits, dense(input_ids=x).logits)


# ---- the torchao engine ----------------------------------------------------------------------

def _nf4_weights(model) -> dict:
    """{name: (packed codes, int8 block scales, dequantized fp32)} of every torchao NF4 layer."""
    import torch

    from edgeft.distill.nf4_torchao import nf4_layers

    return {n: (m.weight.quantized_data.clone(), m.weight.quantized_scalers.clone(), m.weight.to(torch.float32).clone())
            for n, m in nf4_layers(model)}


@needs_torchao
def test_torchao_base_trains_adapters_over_steps_and_stays_frozen(tmp_path):
    """torchao engine: every linear layer but the head holds a frozen NF4Tensor (64-weight blocks);
    over several optimizer steps every adapter gets gradient and moves, and the base stays bit for bit."""
    import torch

    from edgeft.distill.config import DistillConfig
    from edgeft.distill.loop import train
    from edgeft.distill.nf4_torchao import nf4_api, nf4_layers
    from edgeft.distill.qlora import add_lora, load_base

    nf4_tensor, _ = nf4_api()
    t_dir = tiny_llama(tmp_path / "t", hidden=64, tie=False)  # an untied head: a linear layer of its own
    base = load_base(t_dir, quantize=True, engine="torchao")
    linears = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = {n for n, m in linears.items() if isinstance(m.weight, nf4_tensor)}
    assert quantized == set(linears) - {"lm_head"} and len(quantized) == 2 * 7  # q k v o gate up down per layer
    assert all(linears[n].weight.block_size == 64 and not linears[n].weight.requires_grad for n in quantized)
    before = _nf4_weights(base)
    cfg = DistillConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0, steps=4, batch_size=2, grad_accum=1, alpha=0.0, lr=1e-2,
                        warmup_steps=0, save_every=0)
    model = add_lora(base, cfg)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert len(start) == 2 * len(quantized) and all("lora_" in n for n in start)  # only adapters train
    recs, batch = _batch(tmp_path, t_dir)
    log = train(model, recs, None, None, 0, cfg, tmp_path / "ck", resume=False)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["grad_norm"] > 0 for r in log)
    moved = [n for n, p in model.named_parameters() if n in start and not torch.equal(p.detach(), start[n])]
    assert sorted(moved) == sorted(start)  # lora_B from step 1, lora_A once lora_B is no longer zero
    model.zero_grad(set_to_none=True)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"])
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in start)
    after = _nf4_weights(model)
    assert len(after) == len(before)
    for (name, old), new in zip(sorted(before.items()), (after[k] for k in sorted(after))):
        assert all(torch.equal(a, b) for a, b in zip(old, new)), name
    assert all(m.weight.grad is None for _, m in nf4_layers(model))


@needs_bnb
@needs_torchao
def test_engines_quantize_the_same_layers_to_errors_of_the_same_size_but_not_identically(tmp_path):
    """The torchao base replaces what bitsandbytes quantizes (every linear layer but the head), with
    NF4's error bound; the weights differ (int8 block scales, 4-decimal levels), which is why an
    adapter records its engine and merge rebuilds that one."""
    from edgeft.distill.qlora import dequantized_state, four_bit_layers, load_base

    t_dir = tiny_llama(tmp_path / "t", hidden=64)
    bnb, ao, dense = load_base(t_dir, True, "bitsandbytes"), load_base(t_dir, True, "torchao"), load_base(t_dir, False)
    assert four_bit_layers(bnb) and not four_bit_layers(ao)
    w_bnb, w_ao = dequantized_state(bnb), dequantized_state(ao)
    assert sorted(w_ao) == sorted(w_bnb)
    mods = dict(dense.named_modules())
    for name, w in w_ao.items():
        ref = mods[name].weight
        absmax = ref.abs().max().item()
        assert 0 < (w - ref).abs().max().item() <= 0.16 * absmax, name  # as for bitsandbytes: half the widest level gap
        rms_ao, rms_bnb = (w - ref).pow(2).mean().sqrt().item(), (w_bnb[name].reshape(ref.shape) - ref).pow(2).mean().sqrt().item()
        assert abs(rms_ao - rms_bnb) <= 0.05 * rms_bnb, name
        assert not (w == w_bnb[name].reshape(ref.shape)).all(), name


@needs_bnb
def test_auto_engine_is_bitsandbytes_when_importable():
    from edgeft.distill.qlora import resolve_engine

    assert resolve_engine("auto") == "bitsandbytes"


@needs_torchao
def test_auto_engine_falls_back_to_torchao_without_bitsandbytes(tmp_path, monkeypatch):
    from edgeft.distill import nf4_torchao, qlora
    from edgeft.errors import BackendUnavailable

    t_dir = tiny_llama(tmp_path / "t", hidden=32)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    assert qlora.resolve_engine("auto") == "torchao"
    base = qlora.load_base(t_dir, quantize=True)  # the default engine, "auto"
    assert len(nf4_torchao.nf4_layers(base)) == 2 * 7 and not qlora.four_bit_layers(base)
    with pytest.raises(BackendUnavailable) as exc:
        qlora.resolve_engine("bitsandbytes")
    assert "pip install bitsandbytes" in exc.value.one_line() and "--nf4-engine torchao" in exc.value.one_line()
    monkeypatch.setattr(nf4_torchao, "available", lambda: False)
    with pytest.raises(BackendUnavailable) as exc:
        qlora.resolve_engine("auto")
    line = exc.value.one_line()
    assert "bitsandbytes or torchao" in line and "--no-quantize-base" in line and "\n" not in line


def test_bad_nf4_engine_is_a_one_line_config_error(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main
    from edgeft.distill.config import DistillConfig
    from edgeft.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        DistillConfig().with_overrides(nf4_engine="tensorrt")
    line = exc.value.one_line()
    assert "nf4_engine: must be one of auto, bitsandbytes, torchao, got 'tensorrt'" in line and "\n" not in line
    result = CliRunner().invoke(main, ["distill", "--data", str(tmp_path), "--nf4-engine", "tensorrt"])
    assert result.exit_code == 2 and "'tensorrt' is not one of" in result.output and "Traceback" not in result.output
    # an engine for a base that is not quantized: the flag would silently do nothing
    result = CliRunner().invoke(main, ["distill", "--data", str(tmp_path), "--no-quantize-base", "--nf4-engine", "torchao"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("edgeft: error:")]
    assert len(errors) == 1 and "--nf4-engine: " in errors[0] and "not quantized" in errors[0]
