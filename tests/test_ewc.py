"""EWC on adapter parameters (issue 18): the penalty and the Fisher estimate against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from edgeft.distill import ewc


def test_the_penalty_is_lambda_times_fisher_weighted_squared_distance():
    theta = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    anchor = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.5]])}
    fisher = {"a": torch.tensor([0.5, 2.0]), "b": torch.tensor([[4.0]])}
    # 3 * (0.5 * 1^2 + 2 * 2^2 + 4 * (-1)^2) = 3 * 12.5
    assert float(ewc.penalty(theta, anchor, fisher, 3.0)) == pytest.approx(37.5)
    assert float(ewc.penalty(anchor, anchor, fisher, 3.0)) == 0.0


def test_the_fisher_is_the_mean_of_per_record_squared_gradients():
    """Loss (w.x - t)^2 with w = [1, 1]: record ([1, 0], 0) has gradient [2, 0], record ([0, 2], 1) has
    [0, 4]; F = mean of squares = [2, 8]. The square of the mean gradient ([1, 2] -> [1, 4]) would be wrong."""
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    records = [(torch.tensor([1.0, 0.0]), 0.0), (torch.tensor([0.0, 2.0]), 1.0)]
    fisher = ewc.fisher_diagonal({"w": w}, [(lambda x=x, t=t: (w @ x - t) ** 2) for x, t in records])
    assert fisher["w"].tolist() == pytest.approx([2.0, 8.0])
    assert w.grad is None  # no gradient left behind for the optimizer to apply


def test_fisher_and_anchor_round_trip_with_the_adapter(tmp_path):
    fisher = {"x.lora_A.default.weight": torch.rand(4, 8)}
    anchor = {"x.lora_A.default.weight": torch.randn(4, 8)}
    ewc.save(tmp_path, fisher, anchor, records=5)
    f2, a2 = ewc.load(tmp_path)
    assert torch.equal(f2["x.lora_A.default.weight"], fisher["x.lora_A.default.weight"])
    assert torch.equal(a2["x.lora_A.default.weight"], anchor["x.lora_A.default.weight"])


def test_an_adapter_without_its_fisher_cannot_be_held_by_ewc(tmp_path):
    from edgeft.errors import EdgeftError

    with pytest.raises(EdgeftError, match="without its Fisher information"):
        ewc.load(tmp_path)


def _invoke(*args):
    from click.testing import CliRunner

    from edgeft.cli import main

    return CliRunner().invoke(main, ["--quiet", *args])


def _distance(adapter_a, adapter_b) -> float:
    """The Fisher-weighted squared distance between two adapters' parameters (the EWC penalty at λ = 1)."""
    from safetensors.torch import load_file

    fisher, anchor = ewc.load(adapter_a)
    now = load_file(str(adapter_b / "adapter_model.safetensors"))
    # peft drops the adapter name ("default") when it saves; the trainable names carry it
    saved = {k.replace(".default", ""): k for k in fisher}
    params = {saved[k]: v for k, v in now.items() if k in saved}
    assert len(params) == len(fisher)
    return float(ewc.penalty(params, anchor, fisher, 1.0))


@pytest.fixture(scope="module")
def old_adapter(tmp_path_factory):
    """An adapter trained on 'old' records with its Fisher stored beside it."""
    import json

    from distill_data import write_prepared
    from tiny_models import tiny_llama

    tmp = tmp_path_factory.mktemp("ewc")
    base = tiny_llama(tmp / "base", layers=2)
    old = write_prepared(tmp / "old", base, n_train=8, n_eval=2, prompt_len=4)
    new = write_prepared(tmp / "new", base, n_train=8, n_eval=2, prompt_len=12)
    r = _invoke("distill", "--teacher", str(base), "--data", str(old), "--student", str(base), "--out", str(tmp / "a"),
                "--steps", "3", "--batch-size", "2", "--grad-accum", "1", "--lora-rank", "4", "--alpha", "0",
                "--no-quantize-base", "--fisher-records", "6", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["continual"]["fisher_records"] == 6
    return tmp, base, new, tmp / "a" / "adapter"


def _update(tmp, base, new, adapter, name: str, *extra: str):
    import json

    r = _invoke("distill", "--teacher", str(base), "--data", str(new), "--continue", str(adapter), "--out", str(tmp / name),
                "--steps", "6", "--batch-size", "2", "--grad-accum", "1", "--alpha", "0", "--lr", "5e-2", *extra, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), tmp / name / "adapter"


def test_ewc_holds_the_adapter_nearer_what_the_old_task_relied_on(old_adapter):
    """--continue starts from the adapter itself (the first step's penalty is 0: θ = θ*); with --ewc the
    Fisher-weighted distance from θ* ends smaller than plain continued training's, and replay mixes old
    records in at the ratio asked."""
    import csv

    tmp, base, new, adapter = old_adapter
    plain, plain_dir = _update(tmp, base, new, adapter, "plain")
    held, held_dir = _update(tmp, base, new, adapter, "ewc", "--ewc", "1000")
    replay, _ = _update(tmp, base, new, adapter, "replay", "--replay", "0.5")
    log = list(csv.DictReader((tmp / "ewc" / "train_log.csv").open()))
    assert float(log[0]["ewc"]) == 0.0 and float(log[-1]["ewc"]) > 0.0
    assert held["continual"] == {"continued_from": str(adapter), "ewc_lambda": 1000.0, "replayed_records": 0, "fisher_records": 0}
    assert replay["continual"]["replayed_records"] == 4 and replay["train_records"] == 12
    assert _distance(adapter, held_dir) < 0.5 * _distance(adapter, plain_dir)


def test_ewc_without_continue_or_without_a_stored_fisher_is_one_line(old_adapter):
    tmp, base, new, adapter = old_adapter
    r = _invoke("distill", "--teacher", str(base), "--data", str(new), "--out", str(tmp / "x"), "--ewc", "10")
    assert r.exit_code == 2 and "--continue" in r.output and len(r.output.strip().splitlines()) == 1
    plain_dir = tmp / "plain" / "adapter"  # continued without --fisher-records: no Fisher stored with it
    if not plain_dir.is_dir():
        _update(tmp, base, new, adapter, "plain")
    r = _invoke("distill", "--teacher", str(base), "--data", str(new), "--continue", str(plain_dir), "--out", str(tmp / "y"),
                "--ewc", "10", "--steps", "1")
    assert r.exit_code == 2 and "without its Fisher information" in r.output, r.output
