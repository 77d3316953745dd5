"""The 4-bit (NF4) student base: adapters train, and the bitsandbytes CPU repack trap is guarded."""

from __future__ import annotations

import pytest

from distill_data import write_prepared
from tiny_models import tiny_llama

pytest.importorskip("bitsandbytes")


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
