"""The training loop on a tiny teacher: resume equals an uninterrupted run, NaN stops, outputs written."""

from __future__ import annotations

import json

import pytest

from distill_data import write_prepared
from tiny_models import tiny_llama


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from edgeft.distill import open_data

    root = tmp_path_factory.mktemp("distill-loop")
    t_dir = tiny_llama(root / "teacher", hidden=64, layers=4)
    return t_dir, open_data(write_prepared(root / "data", t_dir, pad_to=52), str(t_dir), root)


def _cfg(**kw):
    from edgeft.distill.config import DistillConfig

    base = dict(student_layers=2, steps=6, batch_size=4, grad_accum=2, save_every=2, lora_rank=4, lora_alpha=8, top_k=16,
                lr=5e-3, warmup_steps=1, quantize_base=False, max_eval_records=8)
    base.update(kw)
    return DistillConfig(**base)


def _adapter_tensors(adapter_dir):
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_resume_after_interrupt_matches_uninterrupted_run(setup, tmp_path, monkeypatch):
    import torch

    from edgeft.distill import loop, run

    t_dir, data = setup
    cfg = _cfg()
    full = _adapter_tensors(run(str(t_dir), data, tmp_path / "a", cfg))

    real_step, calls = loop._optimizer_step, []

    def interrupted(opt, sched):
        calls.append(1)
        if len(calls) == 5:  # Ctrl-C during step 5: the step-4 checkpoint is the last good one
            raise KeyboardInterrupt
        real_step(opt, sched)

    monkeypatch.setattr(loop, "_optimizer_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(str(t_dir), data, tmp_path / "b", cfg)
    out = tmp_path / "b"
    assert not (out / "adapter").exists()  # no half-written adapter under the final name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert not list(out.rglob("*.partial"))
    monkeypatch.setattr(loop, "_optimizer_step", real_step)
    resumed = _adapter_tensors(run(str(t_dir), data, out, cfg, resume=True))
    assert resumed.keys() == full.keys()
    for k in full:
        assert torch.allclose(resumed[k], full[k], atol=1e-6), k
    # and the adapters moved: a run that did nothing would also "match"
    assert any(v.abs().max() > 1e-3 for k, v in full.items() if "lora_B" in k)
    log = (out / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + cfg.steps


def test_nan_loss_stops_naming_the_step(setup, tmp_path, monkeypatch):
    from edgeft.distill import loop, run

    t_dir, data = setup
    real, calls = loop.kd_loss, []

    def poisoned(*a, **kw):
        parts = real(*a, **kw)
        calls.append(1)
        if len(calls) == 5:  # step 3, micro-batch 1 (two micro-batches per step)
            parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(loop, "kd_loss", poisoned)
    with pytest.raises(loop.TrainingError, match=r"loss became nan at step 3 \(micro-batch 1\)"):
        run(str(t_dir), data, tmp_path / "n", _cfg())
    assert not (tmp_path / "n" / "adapter").exists()
    assert (tmp_path / "n" / "checkpoints" / "step-000002" / "state.pt").is_file()


def test_run_writes_report_curve_and_improves_on_train_data(setup, tmp_path):
    from edgeft.distill import run

    t_dir, data = setup
    # eval on the training split: a few steps must bring the student closer to the teacher there
    from edgeft.distill.records import PreparedSplits

    same = PreparedSplits(out_dir=data.out_dir, train=data.train, eval=data.train)
    adapter = run(str(t_dir), same, tmp_path / "r", _cfg(steps=10, save_every=0, quantize_base=True, grad_checkpointing=True))
    out = tmp_path / "r"
    report = json.loads((out / "distill.json").read_text())
    ev = report["eval"]
    assert ev["student_after"]["nll"] < ev["student_before"]["nll"]
    assert report["teacher_cache_hit"] is False
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "eval.csv").read_text().startswith("model,perplexity,nll,tokens,top1_agreement")
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    student = json.loads((out / "student.json").read_text())
    assert student["kept_layers"] == [0, 3] and student["parameters"] > 0 and student["estimated_size_bytes"] > 0
    # a second run reuses the teacher cache
    run(str(t_dir), same, tmp_path / "r2", _cfg(steps=1, save_every=0), cache_dir=out / "teacher-cache")
    assert json.loads((tmp_path / "r2" / "distill.json").read_text())["teacher_cache_hit"] is True
