"""The linear stand-in for a pruned student's dropped layers: which runs take one, that the folded map
brings the student's stream closer to the teacher's, and that it is refused where it cannot help."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from distill_data import write_prepared
from tiny_models import tiny_gemma3, tiny_llama


def _records(vocab: int, n: int = 24, seed: int = 1):
    from edgeft.distill.records import Record

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = tuple(rng.randrange(3, vocab) for _ in range(rng.randrange(12, 40)))
        out.append(Record(input_ids=ids, labels=(-100,) * 4 + ids[4:]))
    return out


def _model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()


def test_runs_of_dropped_layers_with_a_kept_layer_before_them():
    from edgeft.distill.stand_in import Fold, gaps, layer_map

    assert gaps((0, 1, 3, 6, 7), 8) == [(2, 3), (4, 6)]
    assert gaps((2, 3), 4) == []  # nothing kept before layers 0-1: no MLP to fold into
    assert gaps((0, 1), 4) == [(2, 4)]  # a trailing run stands in for the last layers
    assert gaps(tuple(range(5)), 5) == []
    folds = [Fold((2, 3), 1, 100), Fold((4, 6), 3, 100)]
    assert layer_map((0, 1, 3, 6, 7), folds) == (0, 2, 5, 6, 7)


def _falling(*values):
    """An NLL for the check that reads `values` in turn: a random tiny model predicts nearly uniformly,
    so its real NLL barely moves (the real model's check is in benchmarks/README.md)."""
    it = iter(values)
    return lambda model, records: next(it)


def test_the_folded_map_brings_the_students_stream_closer_to_the_teachers(tmp_path):
    """Dropping layer 3 of 6: after the fold, the student's output of layer 2 on the fit tokens is
    nearer the teacher's output of layer 3 than the plain drop's is (least squares can only lower it
    from T = I, the drop), and only layer 2's down projection changed."""
    import torch

    from edgeft.distill.records import collate
    from edgeft.distill.stand_in import stand_in
    from edgeft.distill.student import drop_layers

    teacher = _model(tiny_llama(tmp_path / "t", layers=6))
    records = _records(teacher.config.vocab_size)
    keep = (0, 1, 2, 4, 5)
    plain = drop_layers(teacher, keep)
    student = drop_layers(teacher, keep)
    folds, record = stand_in(teacher, student, keep, records, records[::3], 0, 8, nll=_falling(2.0, 1.0))
    assert [(f.dropped, f.into) for f in folds] == [((3, 4), 2)]
    assert folds[0].tokens == sum(len(r.input_ids) for r in records)
    assert record["calibration_nll"] == {"dropped": 2.0, "stand_in": 1.0} and record["calibration_records"] == 8
    assert record["folds"] == [{"dropped": [3], "into_layer": 2, "tokens": folds[0].tokens}]

    batch = collate(records, 0)
    sel = batch["attention_mask"].bool()
    with torch.no_grad():
        want = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states[4][sel]

        def err(model):
            got = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states[3][sel]
            return float(((got - want) ** 2).sum())

        assert err(student) < 0.9 * err(plain)
    # only layer 2's down projection changed
    changed = [n for (n, p), (_, q) in zip(student.named_parameters(), plain.named_parameters()) if not torch.equal(p, q)]
    assert changed == ["model.layers.2.mlp.down_proj.weight"]


def test_a_map_that_does_not_lower_the_nll_is_not_kept(tmp_path):
    import torch

    from edgeft.distill.stand_in import stand_in
    from edgeft.distill.student import drop_layers

    teacher = _model(tiny_llama(tmp_path / "t", layers=4))
    keep = (0, 2, 3)
    student = drop_layers(teacher, keep)
    before = {n: p.clone() for n, p in student.named_parameters()}
    folds, record = stand_in(teacher, student, keep, _records(teacher.config.vocab_size), [], 0, 8, nll=_falling(1.0, 1.5))
    assert folds == [] and record["folds"] == []
    assert "did not lower the calibration NLL (1.0000 -> 1.5000)" in record["reason"]
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())


def test_a_gemma_layer_normalizes_its_mlp_output_so_takes_no_map(tmp_path):
    """Gemma 3 normalizes the MLP's output before the residual add, so a map on the down projection is
    not a map on the stream: nothing is folded and the reason says why."""
    from edgeft.distill.stand_in import stand_in
    from edgeft.distill.student import drop_layers

    teacher = _model(tiny_gemma3(tmp_path / "g", layers=6))
    keep = (0, 1, 3, 4, 5)
    student = drop_layers(teacher, keep)
    folds, record = stand_in(teacher, student, keep, _records(teacher.config.vocab_size), [], 0, 8,
                             nll=lambda m, r: pytest.fail("nothing to check"))
    assert folds == [] and "normalized before the residual add" in record["reason"]


def test_distill_folds_the_stand_in_into_the_student_it_writes(tmp_path, monkeypatch):
    """`edgeft distill --keep-layers` writes the folded student (its student.json says what stands for
    what) and `--no-stand-in` writes the plain drop."""
    import torch

    from edgeft.cli import main
    from edgeft.distill import stand_in as stand_in_mod
    from edgeft.distill.student import drop_layers

    real = stand_in_mod.stand_in
    monkeypatch.setattr(stand_in_mod, "stand_in", lambda *a, nll, **k: real(*a, nll=_falling(2.0, 1.0), **k))

    t_dir = tiny_llama(tmp_path / "t", layers=4)
    data = write_prepared(tmp_path / "d", t_dir, n_train=8, n_eval=4)
    common = ["--teacher", str(t_dir), "--data", str(data), "--keep-layers", "0,1,3", "--steps", "1", "--batch-size", "2",
              "--grad-accum", "1", "--lora-rank", "4", "--top-k", "8", "--no-quantize-base"]
    for flag, name in (("--stand-in", "on"), ("--no-stand-in", "off")):
        r = CliRunner().invoke(main, ["--quiet", "distill", *common, flag, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    on = json.loads((tmp_path / "on" / "student.json").read_text())
    off = json.loads((tmp_path / "off" / "student.json").read_text())
    assert on["stand_in"]["folds"] == [{"dropped": [2], "into_layer": 1, "tokens": on["stand_in"]["folds"][0]["tokens"]}]
    assert on["stands_for"] == [0, 2, 3] and "stands_for" not in off and "stand_in" not in off
    plain = drop_layers(_model(t_dir), (0, 1, 3))
    for name, same in (("off", True), ("on", False)):
        got = _model(tmp_path / name / "student").model.layers[1].mlp.down_proj.weight
        assert torch.equal(got, plain.model.layers[1].mlp.down_proj.weight) is same


def test_the_plain_drops_nll_from_the_pick_is_not_evaluated_again(tmp_path):
    """Given the block pick's score of the plain drop, the check evaluates only the folded student."""
    from edgeft.distill.stand_in import stand_in
    from edgeft.distill.student import drop_layers

    teacher = _model(tiny_llama(tmp_path / "t", layers=4))
    keep = (0, 2, 3)
    folds, record = stand_in(teacher, drop_layers(teacher, keep), keep, _records(teacher.config.vocab_size), [], 0, 8,
                             nll=_falling(0.5), dropped_nll=1.0)
    assert len(folds) == 1 and record["calibration_nll"] == {"dropped": 1.0, "stand_in": 0.5}
