"""`edgeft distill` and `edgeft merge` from the command line: one line and exit 2 on bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from distill_data import write_prepared
from tiny_models import tiny_llama


def _invoke(*args):
    from edgeft.cli import main

    return CliRunner().invoke(main, ["--quiet", *args])


def _distill_kept(tmp_path, keep: str, *extra: str):
    """Two steps of distilling a 4-layer tiny teacher into the layers `keep`: (teacher, data, out, result)."""
    t_dir = tiny_llama(tmp_path / "t", layers=4)
    data = write_prepared(tmp_path / "d", t_dir, n_train=8, n_eval=4)
    out = tmp_path / "out"
    r = _invoke("distill", "--teacher", str(t_dir), "--data", str(data), "--keep-layers", keep, "--out", str(out),
                "--steps", "2", "--batch-size", "2", "--grad-accum", "1", "--lora-rank", "4", "--top-k", "8",
                "--no-quantize-base", *extra, "--json")
    return t_dir, data, out, r


def test_distill_then_merge_from_the_cli(tmp_path):
    _, _, out, r = _distill_kept(tmp_path, "0,2,3")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["student"]["kept_layers"] == [0, 2, 3] and report["config"]["quantize_base"] is False
    assert set(report["eval"]) == {"teacher", "student_before", "student_after"}
    r = _invoke("merge", str(out / "adapter"), "--out", str(tmp_path / "merged"), "--dtype", "float32")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def _prune_and_distill(tmp_path, pick: str, layers: int, n_train: int):
    """One step of distilling a tiny teacher into a 3-layer student picked by `pick`: (teacher, data, out, report)."""
    t_dir = tiny_llama(tmp_path / "t", layers=layers)
    data = write_prepared(tmp_path / "d", t_dir, n_train=n_train, n_eval=2)
    out = tmp_path / "out"
    r = _invoke("distill", "--teacher", str(t_dir), "--data", str(data), "--student-layers", "3", "--layer-pick", pick,
                "--out", str(out), "--steps", "1", "--batch-size", "2", "--grad-accum", "1", "--lora-rank", "2",
                "--top-k", "4", "--no-quantize-base", "--json")
    assert r.exit_code == 0, r.output
    return t_dir, data, out, json.loads(r.stdout)


def test_layer_pick_ends_keeps_the_first_and_last_layers(tmp_path):
    report = _prune_and_distill(tmp_path, "ends", layers=4, n_train=4)[3]
    assert report["student"]["kept_layers"] == [0, 1, 3]  # even spacing would keep [0, 2, 3]


def test_layer_pick_block_keeps_the_measured_best_block(tmp_path):
    from edgeft.distill.evaluate import evaluate
    from edgeft.distill.records import read_records
    from edgeft.distill.student import drop_layers
    from edgeft.models import load_model, resolve

    t_dir, data, out, report = _prune_and_distill(tmp_path, "block", layers=5, n_train=6)
    kept = report["student"]["kept_layers"]
    pick = json.loads((out / "student.json").read_text())["layer_pick"]
    scores = pick["nll_by_dropped_block"]
    assert set(scores) == {"0-1", "1-2", "2-3", "3-4"} and pick["calibration_records"] == 6
    dropped = sorted(set(range(5)) - set(kept))
    assert scores[f"{dropped[0]}-{dropped[-1]}"] == min(scores.values())
    # the scores are the pruned teacher's real NLL on the training records, not the eval split
    teacher = load_model(resolve(t_dir))
    recs = read_records(data / "train.jsonl", vocab_size=teacher.config.vocab_size, max_length=256)
    assert evaluate(drop_layers(teacher, [0, 1, 4]), recs, 0, 8).nll == pytest.approx(scores["2-3"], rel=1e-5)


def test_student_with_another_vocabulary_is_one_line_exit_2(tmp_path):
    t_dir = tiny_llama(tmp_path / "t")
    s_dir = tiny_llama(tmp_path / "s", tokenizer_style="digits")  # another BPE: another vocabulary
    data = write_prepared(tmp_path / "d", t_dir, n_train=4, n_eval=2)
    r = _invoke("distill", "--teacher", str(t_dir), "--student", str(s_dir), "--data", str(data), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("edgeft: error:")]
    assert len(lines) == 1 and "tokenizer differs from the teacher's" in lines[0] and str(s_dir) in lines[0]
    assert "Traceback" not in r.output and not (tmp_path / "o" / "adapter").exists()


@pytest.mark.parametrize("bad, where", [("{oops\n", "line 2: invalid JSON"), ('{"input_ids": [1]}\n', "line 2: 'labels' must be")])
def test_bad_data_line_is_one_line_exit_2(tmp_path, bad, where):
    t_dir = tiny_llama(tmp_path / "t")
    data = write_prepared(tmp_path / "d", t_dir, n_train=4, n_eval=2)
    first = (data / "train.jsonl").read_text().splitlines()[0]
    (data / "train.jsonl").write_text(first + "\n" + bad)
    r = _invoke("distill", "--teacher", str(t_dir), "--data", str(data), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2, r.output
    assert f"train.jsonl: {where}" in r.output and "Traceback" not in r.output


def test_bad_flags_are_reported_together(tmp_path):
    data = write_prepared(tmp_path / "d", tiny_llama(tmp_path / "t"), n_train=2, n_eval=1)
    r = _invoke("distill", "--data", str(data), "--alpha", "2", "--temperature", "0", "--preset", "demo")
    assert r.exit_code == 2 and "alpha" in r.output and "temperature" in r.output
    r = _invoke("distill", "--data", str(data), "--preset", "huge")
    assert r.exit_code == 2 and "'huge' is not one of 'demo', 'full'" in r.output  # as `build --preset` says it


def test_missing_prepared_split_is_exit_2(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("")
    r = _invoke("distill", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "eval.jsonl" in r.output


def test_hidden_state_term_trains_and_is_logged(tmp_path):
    """--hidden-weight runs the teacher live and logs the term; it needs a student pruned from the teacher."""
    import csv

    t_dir, data, out, r = _distill_kept(tmp_path, "0,3", "--hidden-weight", "0.5")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert len(rows) == 2 and all(0.0 < float(row["hidden"]) <= 2.0 for row in rows)
    bad = _invoke("distill", "--teacher", str(t_dir), "--data", str(data), "--student", str(t_dir), "--out",
                  str(tmp_path / "o2"), "--hidden-weight", "0.5")
    assert bad.exit_code == 2 and "--hidden-weight: needs a student pruned" in bad.output


def test_training_without_a_terminal_still_says_how_far_it_is(tmp_path):
    """With stderr not a terminal (a CI log, a redirect) there is no progress bar; a task build trained for
    twelve minutes without a line. The last step, at least, is always said."""
    from edgeft.cli import main

    t_dir = tiny_llama(tmp_path / "t", layers=4)
    data = write_prepared(tmp_path / "d", t_dir, n_train=8, n_eval=4)
    r = CliRunner().invoke(main, ["distill", "--teacher", str(t_dir), "--data", str(data), "--keep-layers", "0,3", "--out",
                                  str(tmp_path / "out"), "--steps", "2", "--batch-size", "2", "--grad-accum", "1",
                                  "--lora-rank", "4", "--top-k", "8", "--no-quantize-base"])
    assert r.exit_code == 0, r.output
    assert "distill: step 2 of 2, loss " in r.stderr
