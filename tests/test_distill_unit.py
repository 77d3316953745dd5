"""Distillation pieces on tiny models: the KD loss by hand, student construction, the top-k cache, records, config."""

from __future__ import annotations

import json
import math

import pytest

from distill_data import write_prepared
from tiny_models import tiny_llama


def test_kd_loss_matches_hand_computation():
    """One target position, vocabulary 3, teacher top-2; every term worked out with math."""
    import torch

    from edgeft.distill.kd_loss import kd_loss

    s = [1.0, 2.0, 0.5]  # student logits
    t_lp = [math.log(0.6), math.log(0.3)]  # teacher log-probs at ids 1 and 0 (0.1 of its mass is cut off)
    alpha, T = 0.25, 2.0
    # teacher at T, renormalized over its top 2: p_i ∝ exp(log p_i / T) = sqrt(p_i)
    z = math.sqrt(0.6) + math.sqrt(0.3)
    p = [math.sqrt(0.6) / z, math.sqrt(0.3) / z]
    # student log-softmax at T over the full vocabulary, read at ids 1 and 0
    lse = math.log(sum(math.exp(v / T) for v in s))
    q = [s[1] / T - lse, s[0] / T - lse]
    kl = sum(pi * (math.log(pi) - qi) for pi, qi in zip(p, q))
    ce = -(s[2] - math.log(sum(math.exp(v) for v in s)))  # target token 2
    expected = alpha * T * T * kl + (1 - alpha) * ce

    parts = kd_loss(torch.tensor([s]), torch.tensor([[1, 0]]), torch.tensor([t_lp]), torch.tensor([2]), alpha=alpha, temperature=T)
    assert parts.total.item() == pytest.approx(expected, rel=1e-6)
    assert parts.kd.item() == pytest.approx(T * T * kl, rel=1e-6)
    assert parts.ce.item() == pytest.approx(ce, rel=1e-6)


def test_kd_loss_is_zero_when_student_equals_full_teacher():
    import torch

    from edgeft.distill.kd_loss import kd_loss

    logits = torch.randn(5, 11)
    lp = torch.log_softmax(logits, -1)
    vals, ids = lp.topk(11, -1)  # k = vocab: nothing cut off
    parts = kd_loss(logits, ids, vals, torch.zeros(5, dtype=torch.long), alpha=1.0, temperature=3.0)
    assert abs(parts.total.item()) < 1e-5


def test_ends_keeps_the_first_and_last_halves():
    from edgeft.distill.student import ends, pick_layers

    assert ends(30, 15) == tuple(range(8)) + tuple(range(23, 30))
    assert ends(4, 2) == (0, 3)
    assert ends(5, 1) == (0,)
    assert ends(6, 6) == tuple(range(6))
    assert pick_layers(30, 15, "ends") == ends(30, 15)
    assert pick_layers(30, 15, "even") != ends(30, 15)


def test_best_block_keeps_the_cheapest_contiguous_removal():
    from edgeft.distill.student import best_block, block_candidates

    assert block_candidates(6, 3) == [(3, 4, 5), (0, 4, 5), (0, 1, 5), (0, 1, 2)]
    costs = {(3, 4, 5): 9.0, (0, 4, 5): 2.0, (0, 1, 5): 1.5, (0, 1, 2): 7.0}
    seen = []
    keep, scores = best_block(6, 3, lambda k: seen.append(k) or costs[k])
    assert keep == (0, 1, 5) and seen == block_candidates(6, 3)
    assert scores == {"0-2": 9.0, "1-3": 2.0, "2-4": 1.5, "3-5": 7.0}
    assert best_block(4, 4, lambda k: 0.0)[0] == (0, 1, 2, 3)  # nothing to drop: the teacher's layers


@pytest.mark.parametrize("how", ["even", "ends"])
@pytest.mark.parametrize("n_keep", [0, 31])
def test_pick_layers_rejects_impossible_counts(how, n_keep):
    from edgeft.distill.student import block_candidates, pick_layers
    from edgeft.errors import ConfigError

    with pytest.raises(ConfigError, match="between 1 and the teacher's 30 layers"):
        pick_layers(30, n_keep, how)
    with pytest.raises(ConfigError, match="between 1 and the teacher's 30 layers"):
        block_candidates(30, n_keep)


def test_layer_pick_is_validated():
    from edgeft.distill.config import DistillConfig
    from edgeft.errors import ConfigError

    with pytest.raises(ConfigError, match="layer_pick"):
        DistillConfig(layer_pick="middle").validate()


def test_evenly_spaced_keeps_first_and_last():
    from edgeft.distill.student import evenly_spaced

    assert evenly_spaced(30, 15) == tuple(round(i * 29 / 14) for i in range(15))
    assert evenly_spaced(30, 15)[0] == 0 and evenly_spaced(30, 15)[-1] == 29
    assert evenly_spaced(4, 2) == (0, 3)
    assert len(set(evenly_spaced(30, 15))) == 15


def test_student_keeps_chosen_layers_with_teacher_weights(tmp_path):
    import torch

    from edgeft import models
    from edgeft.distill.student import drop_layers, parameter_count

    teacher = models.load_model(models.resolve(tiny_llama(tmp_path / "t", layers=4)))
    student = drop_layers(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for new, old in enumerate([1, 3]):
        for key, val in s_sd.items():
            if key.startswith(f"model.layers.{new}."):
                assert torch.equal(val, t_sd[key.replace(f"layers.{new}.", f"layers.{old}.")]), key
        assert student.model.layers[new].self_attn.layer_idx == new
    assert torch.equal(s_sd["model.embed_tokens.weight"], t_sd["model.embed_tokens.weight"])
    assert teacher.config.num_hidden_layers == 4  # the teacher is untouched
    # the student computes what the teacher's kept layers compute
    ids = torch.tensor([[3, 17, 42, 5]])
    h = teacher.model.embed_tokens(ids)
    pos = torch.arange(4)[None]
    rope = teacher.model.rotary_emb(h, pos)
    for i in (1, 3):
        h = teacher.model.layers[i](h, position_embeddings=rope, attention_mask=None, position_ids=pos)
        h = h[0] if isinstance(h, tuple) else h
    want = teacher.lm_head(teacher.model.norm(h))
    with torch.no_grad():
        got = student(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert parameter_count(student) < parameter_count(teacher)


def test_teacher_cache_round_trip_and_reuse(tmp_path):
    import torch

    from edgeft import models
    from edgeft.distill import teacher_cache
    from edgeft.distill.records import IGNORE, collate, read_records

    t_dir = tiny_llama(tmp_path / "t")
    data = write_prepared(tmp_path / "d", t_dir, n_train=6, n_eval=2, pad_to=52)
    model = models.load_model(models.resolve(t_dir))
    recs = read_records(data / "train.jsonl", vocab_size=model.config.vocab_size, max_length=256)
    calls = []

    def factory():
        calls.append(1)
        return model

    cache, hit = teacher_cache.get_or_build(tmp_path / "c", "h1", factory, recs, 8, 0, 4)
    assert not hit and calls == [1]
    again, hit = teacher_cache.get_or_build(tmp_path / "c", "h1", factory, recs, 8, 0, 4)
    assert hit and calls == [1]  # the teacher did not run again
    assert torch.equal(again.ids, cache.ids) and torch.equal(again.logprobs, cache.logprobs)
    # rows for record 2 equal the teacher's top-8 at its target positions
    batch = collate([recs[2]], 0)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0], -1)
    sel = batch["targets"][0] != IGNORE
    vals, ids = lp[sel].topk(8, -1)
    got_ids, got_lp = again.rows(2)
    assert torch.equal(got_ids, ids) and torch.allclose(got_lp, vals, atol=2e-2)  # stored as float16
    _, other = teacher_cache.get_or_build(tmp_path / "c", "h2", factory, recs, 8, 0, 4)
    assert not other  # another teacher: another cache


def test_records_reject_bad_lines_with_place(tmp_path):
    from edgeft.distill.records import read_records
    from edgeft.errors import EdgeftError

    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps({"input_ids": [1, 2], "labels": [-100, 2], "attention_mask": [1, 1]}) + "\n{not json\n")
    with pytest.raises(EdgeftError, match=r"train.jsonl: line 2: invalid JSON"):
        read_records(p, vocab_size=10, max_length=8)
    p.write_text(json.dumps({"input_ids": [1, 99], "labels": [-100, 2], "attention_mask": [1, 1]}) + "\n")
    with pytest.raises(EdgeftError, match=r"line 1: token id 99 is outside"):
        read_records(p, vocab_size=10, max_length=8)
    p.write_text(json.dumps({"input_ids": [1, 2], "labels": [-100], "attention_mask": [1, 1]}) + "\n")
    with pytest.raises(EdgeftError, match=r"line 1: .*differ in length"):
        read_records(p, vocab_size=10, max_length=8)


def test_collate_shifts_labels_and_masks_padding():
    from edgeft.distill.records import Record, collate

    b = collate([Record((5, 6, 7, 8), (-100, -100, 7, 8)), Record((5, 9), (-100, 9))], pad_id=0)
    assert b["targets"].tolist() == [[-100, 7, 8, -100], [9, -100, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_config_reports_every_problem_and_presets_are_valid():
    from edgeft.distill.config import PRESETS, DistillConfig
    from edgeft.errors import ConfigError

    for cfg in PRESETS.values():
        cfg.validate()
    with pytest.raises(ConfigError) as exc:
        DistillConfig().with_overrides(alpha=1.5, steps=0, temperature=-1.0)
    assert {k for k, _ in exc.value.problems} == {"alpha", "steps", "temperature"}


def test_build_presets_train_on_the_fp32_base_unless_nf4_is_asked_for():
    from edgeft.presets import PRESETS, build_preset

    for name in PRESETS:
        build_preset(name).distill.validate()
        assert build_preset(name).distill.quantize_base is False
        nf4 = build_preset(name, nf4_base=True).distill
        assert nf4.quantize_base is True and nf4.steps == build_preset(name).distill.steps


def test_hidden_state_loss_compares_each_student_layer_with_the_teacher_layer_it_came_from():
    import torch

    from edgeft.distill.loop import hidden_state_loss

    b, s, d = 1, 3, 4
    teacher = [torch.randn(b, s, d, generator=torch.Generator().manual_seed(i)) for i in range(5)]  # embeddings + 4 layers
    mask = torch.tensor([[True, True, False]])  # the padding position is not compared
    student = [teacher[0], teacher[1 + 0], teacher[1 + 3]]  # layers copied from teacher layers 0 and 3, outputs equal
    assert float(hidden_state_loss(student, teacher, (0, 3), mask)) == pytest.approx(0.0, abs=1e-6)
    flipped = [teacher[0], -teacher[1], teacher[4]]  # layer 0 points the opposite way: 1 - cos = 2 there
    assert float(hidden_state_loss(flipped, teacher, (0, 3), mask)) == pytest.approx(1.0, abs=1e-6)
    noise_at_pad = [teacher[0], teacher[1].clone(), teacher[4]]
    noise_at_pad[1][0, 2] = -100.0  # only the masked-out position differs
    assert float(hidden_state_loss(noise_at_pad, teacher, (0, 3), mask)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_block_scores_from_teacher_states_equal_the_whole_pruned_models(tmp_path, family):
    """Starting each pruning at the teacher's hidden state where it departs must give the NLL of the
    whole pruned model, for every block, the last one (no layer after it) and Gemma's sliding layers included."""
    import random

    import tiny_models
    from transformers import AutoModelForCausalLM

    from edgeft.distill.block_scores import block_nlls
    from edgeft.distill.evaluate import evaluate
    from edgeft.distill.records import Record
    from edgeft.distill.student import block_candidates, drop_layers

    # Gemma 3 at 12 layers, dropping 6: a pruning keeps its every-6th-global pattern (`layer_period`)
    n_layers, keep_n = (6, 4) if family == "llama" else (12, 6)
    folder = (tiny_models.tiny_llama(tmp_path / "m", layers=n_layers) if family == "llama"
              else tiny_models.tiny_gemma3(tmp_path / "m", layers=n_layers, sliding_window=8))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    rng = random.Random(0)
    records = []
    for n in (40, 23, 31):  # unequal lengths: padding and the mask are part of what must agree
        ids = tuple(rng.randrange(3, model.config.vocab_size) for _ in range(n))
        records.append(Record(input_ids=ids, labels=(-100,) * 5 + ids[5:]))
    cands = block_candidates(n_layers, keep_n)
    fast = block_nlls(model, cands, records, pad_id=0, batch_size=2)
    slow = [evaluate(drop_layers(model, keep), records, 0, 2).nll for keep in cands]
    assert len(set(round(v, 3) for v in slow)) > 1  # the blocks really differ
    assert fast == pytest.approx(slow, rel=1e-5, abs=1e-5)


def test_block_pick_in_two_rounds_ranks_its_finalists_on_every_calibration_record(tmp_path):
    """With more candidates than finalists, every candidate is screened on a quarter of the
    calibration records and the best FINALISTS are ranked on all of them: each finalist's score is its
    pruned model's NLL on the whole calibration set, the finalists are the screen's best, and the pick
    is the best finalist."""
    import random

    import tiny_models
    from transformers import AutoModelForCausalLM

    from edgeft.distill import loop
    from edgeft.distill.config import DistillConfig
    from edgeft.distill.evaluate import evaluate
    from edgeft.distill.records import Record
    from edgeft.distill.student import block_candidates, drop_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_models.tiny_llama(tmp_path / "m", layers=11), dtype="float32")
    rng = random.Random(1)
    records = []
    for _ in range(16):
        ids = tuple(rng.randrange(3, model.config.vocab_size) for _ in range(rng.randrange(12, 30)))
        records.append(Record(input_ids=ids, labels=(-100,) * 4 + ids[4:]))
    keep, pick, nll = loop._block_pick(model, 10, records, 0, DistillConfig(eval_batch_size=4))
    cands = block_candidates(11, 10)  # 11 candidates, more than the 8 finalists
    name = {c: "{0}-{0}".format(*(set(range(11)) - set(c))) for c in cands}  # best_block's key: the dropped layer
    screen = [evaluate(drop_layers(model, c), records[::4], 0, 4).nll for c in cands]
    assert pick["screen_records"] == 4 and pick["calibration_records"] == 16
    assert [pick["nll_on_screen_by_dropped_block"][name[c]] for c in cands] == pytest.approx(screen, rel=1e-5)
    finalists = sorted(cands, key=lambda c: screen[cands.index(c)])[:loop.FINALISTS]
    assert set(pick["nll_by_dropped_block"]) == {name[c] for c in finalists}
    for c in finalists:
        assert pick["nll_by_dropped_block"][name[c]] == pytest.approx(evaluate(drop_layers(model, c), records, 0, 4).nll, rel=1e-5)
    assert name[keep] == min(pick["nll_by_dropped_block"], key=pick["nll_by_dropped_block"].get)
    assert nll == pick["nll_by_dropped_block"][name[keep]]  # what the stand-in's check reads as the plain drop's NLL


@pytest.mark.parametrize("family", ["llama", "gemma3-softcap", "llama-lora"])
def test_target_logits_equal_the_full_logits_at_the_target_positions(tmp_path, family):
    """The head applied to the scored rows only must give exactly those rows of the model's own
    logits: through Gemma's soft-cap and through a PEFT LoRA wrapper (whose adapters must act)."""
    import json as _json

    import tiny_models
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.distill.logits import target_logits
    from edgeft.distill.records import IGNORE, Record, collate

    if family.startswith("gemma3"):
        folder = tiny_models.tiny_gemma3(tmp_path / "m", layers=2)
        cfg = _json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(_json.dumps({**cfg, "final_logit_softcapping": 3.0}))
    else:
        folder = tiny_models.tiny_llama(tmp_path / "m", layers=2)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    if family.endswith("lora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    batch = collate([Record(tuple(range(5, 25)), (IGNORE,) * 8 + tuple(range(13, 25))),
                     Record(tuple(range(30, 41)), (IGNORE,) * 3 + tuple(range(33, 41)))], pad_id=0)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[batch["targets"] != IGNORE]
        picked, _ = target_logits(model, batch)
    assert picked.shape == full.shape == (12 + 8, model.config.vocab_size)
    torch.testing.assert_close(picked, full, rtol=1e-5, atol=1e-5)
    if family.startswith("gemma3"):
        assert float(picked.abs().max()) <= 3.0  # the cap was applied


def test_prefix_tuning_settings_are_validated():
    from edgeft.distill.config import DistillConfig
    from edgeft.errors import ConfigError

    DistillConfig(method="prefix", quantize_base=False).validate()
    for changes, text in (({"method": "ia3"}, "method"), ({"method": "prefix"}, "fp32 base"),
                          ({"method": "prefix", "quantize_base": False, "prefix_tokens": 0}, "prefix_tokens"),
                          ({"method": "prefix", "quantize_base": False, "prefix_init": "zeros"}, "prefix_init")):
        with pytest.raises(ConfigError, match=text):
            DistillConfig(**changes).validate()


def test_a_short_run_reaches_its_learning_rate():
    """`--steps 4` with a preset's 15 warm-up steps: the warm-up is capped at half the steps."""
    from dataclasses import replace

    from edgeft.distill.config import DistillConfig
    from edgeft.distill.loop import _schedule

    short = replace(DistillConfig(), steps=4, warmup_steps=15)
    assert max(_schedule(s, short) for s in range(4)) == 1.0
    long = replace(DistillConfig(), steps=48, warmup_steps=3)  # the demo: unchanged
    assert [round(_schedule(s, long), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_a_student_keeps_its_teacher_s_pattern_of_layer_kinds(tmp_path):
    """Gemma 3: five sliding-window layers, then a global one. A student that drops one contiguous block of
    six keeps that pattern; any other choice of layers is refused in one line, since llama.cpp holds
    Gemma 3 to it and a layer's kind also sets its RoPE base."""
    import tiny_models
    from transformers import AutoModelForCausalLM

    from edgeft.distill.student import check_pattern, drop_layers, ends, layer_period, nearest_count
    from edgeft.errors import ConfigError

    kinds = (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert layer_period(kinds) == 6 and layer_period(["full_attention"] * 4) == 1 and layer_period(None) == 1
    assert nearest_count(18, 9, 6) == 12 and nearest_count(18, 7, 6) == 6 and nearest_count(30, 15, 1) == 15
    model = AutoModelForCausalLM.from_pretrained(tiny_models.tiny_gemma3(tmp_path / "g", layers=12, sliding_window=8),
                                                 dtype="float32")
    check_pattern(model, ends(12, 6))
    student = drop_layers(model, ends(12, 6))
    assert student.config.layer_types == model.config.layer_types[:6] and len(student.model.layers) == 6
    with pytest.raises(ConfigError, match="repeats every 6 layers"):
        check_pattern(model, ends(12, 8))
