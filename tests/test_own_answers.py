"""On-policy records: the student's own greedy answers, batched as one prompt at a time would give them,
trained on the teacher's logits alone."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from distill_data import write_prepared
from tiny_models import tiny_llama


def _invoke(*args):
    from edgeft.cli import main

    return CliRunner().invoke(main, ["--quiet", *args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-answers")
    t_dir = tiny_llama(root / "t", layers=4)
    return t_dir, write_prepared(root / "d", t_dir, n_train=8, n_eval=4)


def test_until_stop_keeps_the_stop_and_says_whether_it_came():
    from edgeft.greedy import until_stop

    assert until_stop([5, 6, 2, 7, 2], {2}) == ([5, 6, 2], True)
    assert until_stop([5, 6, 7], {2}) == ([5, 6, 7], False)


def test_batched_answers_are_each_prompts_own_greedy_answer(tiny):
    """Left padding and batching must not change what the student says: each answer equals the one
    generate() gives the prompt alone."""
    import torch

    from edgeft import models
    from edgeft.greedy import greedy_answers

    t_dir, _ = tiny
    model = models.load_model(models.resolve(t_dir))
    prompts = [[1, 17, 40, 9], [1, 23], [1, 5, 88, 61, 30, 12, 7], [1, 99, 3]]
    stop = {2}
    got = greedy_answers(model, prompts, new_tokens=12, stop_ids=stop, pad_id=0, batch_size=3)
    assert len(got) == len(prompts)
    for prompt, (answer, ended) in zip(prompts, got):
        with torch.no_grad():
            alone = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=12, do_sample=False, eos_token_id=[2], pad_token_id=0)[0, len(prompt):].tolist()
        assert answer == (alone[: alone.index(2) + 1] if 2 in alone else alone)
        assert ended == (2 in alone)
        assert 1 <= len(answer) <= 12


def test_records_score_the_answer_only_and_respect_max_length(monkeypatch):
    from edgeft.distill import own_answers
    from edgeft.distill.records import IGNORE, Record

    recs = [Record((1, 4, 5, 6, 7), (IGNORE, IGNORE, IGNORE, 6, 7)), Record((1, 8, 9, 10), (IGNORE, IGNORE, 9, 10))]
    # the student's answers pinned (greedy_answers is tested above)
    monkeypatch.setattr(own_answers, "greedy_answers", lambda model, prompts, **kw: [([30, 31, 2], True), ([40, 41, 42], False)])
    out = own_answers.own_answer_records(None, recs, new_tokens=3, stop_ids={2}, pad_id=0, max_length=5, batch_size=2)
    # the prompts are the records' tokens before their first target; the student's tokens are the targets
    assert out.records[0] == Record((1, 4, 5, 30, 31), (IGNORE, IGNORE, IGNORE, 30, 31))  # cut at max_length 5
    assert out.records[1] == Record((1, 8, 40, 41, 42), (IGNORE, IGNORE, 40, 41, 42))
    assert out.tokens == 5 and out.ended == 1


def test_own_answers_need_the_teacher_only_loss():
    from edgeft.distill.config import DistillConfig
    from edgeft.errors import ConfigError

    with pytest.raises(ConfigError, match="alpha must be 1.0"):
        DistillConfig(own_answer_tokens=16, alpha=0.5).validate()
    with pytest.raises(ConfigError, match="0 \\(off\\) or more"):
        DistillConfig(own_answer_tokens=-1).validate()
    DistillConfig(own_answer_tokens=16, alpha=1.0).validate()


def test_cli_names_the_flag_and_exits_2(tiny, tmp_path):
    t_dir, data = tiny
    r = _invoke("distill", "--teacher", str(t_dir), "--data", str(data), "--out", str(tmp_path / "o"), "--own-answers", "8")
    assert r.exit_code == 2, r.output
    assert "--own-answers" in r.output and "alpha must be 1.0" in r.output
    assert "Traceback" not in r.output


def test_distill_trains_on_the_students_own_answers_scored_by_the_teacher(tiny, tmp_path):
    """The run adds one record per training prompt holding the pruned student's greedy answer, writes
    them, and the teacher's cache covers them (so the loss scores them by the teacher's logits)."""
    import torch
    from safetensors.torch import load_file

    from edgeft import models
    from edgeft.distill.records import IGNORE, read_records

    t_dir, data = tiny
    out = tmp_path / "out"
    r = _invoke("distill", "--teacher", str(t_dir), "--data", str(data), "--keep-layers", "0,2,3", "--out", str(out),
                "--steps", "2", "--batch-size", "2", "--grad-accum", "1", "--lora-rank", "4", "--top-k", "8",
                "--no-quantize-base", "--alpha", "1.0", "--own-answers", "6", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    teacher_recs = read_records(data / "train.jsonl", vocab_size=10**6, max_length=256)
    assert report["own_answers"]["records"] == len(teacher_recs) == 8
    assert report["train_records"] == 16
    own = read_records(out / "own_answers.jsonl", vocab_size=10**6, max_length=256)
    assert len(own) == 8 and report["own_answers"]["answer_tokens"] == sum(
        sum(t != IGNORE for t in rec.labels) for rec in own)
    # each answer is what the pruned student (before training) says to that prompt
    student = models.load_model(models.resolve(out / "student"))
    for teacher_rec, rec in zip(teacher_recs[:3], own[:3]):
        first = next(i for i, t in enumerate(teacher_rec.labels) if t != IGNORE)
        prompt = list(teacher_rec.input_ids[:first])
        assert list(rec.input_ids[:first]) == prompt and all(t == IGNORE for t in rec.labels[:first])
        with torch.no_grad():
            alone = student.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                     max_new_tokens=6, do_sample=False, eos_token_id=sorted(models.stop_ids(
                                         models.load_tokenizer(models.resolve(out / "student")), student)),
                                     pad_token_id=0)[0, len(prompt):].tolist()
        assert list(rec.input_ids[first:]) == alone[: len(rec.input_ids) - first]
    # the teacher's cache holds the positions of all 16 records
    cache_file = next((out / "teacher-cache").glob("*.safetensors"))
    offsets = load_file(str(cache_file))["offsets"]
    assert offsets.numel() == 17
