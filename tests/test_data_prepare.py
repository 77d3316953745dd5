"""`prepare` end to end on a tiny teacher: synthesis with an on-disk cache, the augmentation cap,
the output format, the CLI, and the shipped default prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgeft.data.prepare import DEFAULT_DATA, DataConfig, analyze, cap_augmented, prepare
from edgeft.data.report import Step
from edgeft.data.tokenize import IGNORE_INDEX
from tiny_models import write_jsonl

ORIGINALS = [{"input": f"Original question {i}: what is {i} plus {i * 3}?", "target": f"It is {i * 4}."} for i in range(6)]
NO_TARGET = [{"input": f"Teacher, please describe the color number {i} of the rainbow ({c}).", "metadata": {"task_type": "qa"}}
             for i, c in enumerate(["red", "orange", "yellow", "green", "blue", "indigo"])]
MARKED = [{"input": f"Paraphrased question {c}: how many legs does a spider have?", "target": "Eight.",
           "metadata": {"augmented": True}} for c in "ab"]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("ratio,kept", [(1 / 3, 2), (0.5, 3), (1.0, 6), (0.0, 0)])
def test_augmentation_cap(tmp_path, tok, ratio, kept):
    path = write_jsonl(tmp_path / "d.jsonl", ORIGINALS + NO_TARGET + MARKED)
    an = analyze(path, lambda: tok, DataConfig(eval_fraction=0.0))
    step = Step("augment_cap")
    out = cap_augmented(an.records, ratio, step)
    augmented = [r for r in out if r.metadata.get("augmented") is True]
    assert len(augmented) == kept  # 6 originals x ratio
    assert len([r for r in out if r.target is not None and not r.metadata.get("augmented")]) == 6  # originals untouched
    assert step.removed == 8 - kept and step.extra["train_augmented_before"] == 8
    again = cap_augmented(analyze(path, lambda: tok, DataConfig(eval_fraction=0.0)).records, ratio, Step("augment_cap"))
    assert [r.input for r in again] == [r.input for r in out]  # deterministic choice


def test_no_originals_means_teacher_targets_are_the_data(tmp_path, tok):
    """With no human targets at all (the default data), teacher answers are not augmentation and are not capped."""
    an = analyze(write_jsonl(tmp_path / "d.jsonl", NO_TARGET), lambda: tok, DataConfig(eval_fraction=0.0))
    step = Step("augment_cap")
    out = cap_augmented(an.records, 1 / 3, step)
    assert len(out) == 6 and step.removed == 0
    assert not any(r.metadata.get("augmented") for r in out)


def test_prepare_synthesizes_and_caches(tmp_path, tiny_llama_dir):
    data = write_jsonl(tmp_path / "d.jsonl", ORIGINALS + NO_TARGET)
    cfg = DataConfig(max_length=96, synth_max_new_tokens=6, augment_ratio=10.0, eval_fraction=0.5, cache_dir=tmp_path / "cache")
    first = prepare(data, str(tiny_llama_dir), tmp_path / "out1", cfg)
    report = json.loads(first.report.read_text())
    synth = next(s for s in report["steps"] if s["step"] == "synthesis")
    assert synth["generated"] == 6 and synth["cached"] == 0 and synth["generated_tokens"] > 0
    assert first.n_train + first.n_eval == report["counts"]["train_examples"] + report["counts"]["eval_examples"]
    assert first.n_eval > 0 and first.n_train > 0

    rows = _read_jsonl(first.train) + _read_jsonl(first.eval)
    records = _read_jsonl(first.train_records) + _read_jsonl(first.eval_records)
    assert len(rows) == len(records)
    for row in rows:
        assert set(row) == {"input_ids", "labels", "attention_mask"}
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) == 96
        assert all(lab == IGNORE_INDEX for lab, m in zip(row["labels"], row["attention_mask"]) if m == 0)
        assert any(lab != IGNORE_INDEX for lab in row["labels"])
    teacher = [r for r in records if r.get("metadata", {}).get("target_source") == "teacher"]
    assert teacher and all(r["target"] for r in teacher) and all(r["metadata"]["augmented"] for r in teacher)
    # an answer the 6-token budget cut is learned without the end of the turn; one the teacher ended keeps it
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(tiny_llama_dir).eos_token_id
    for row, record in zip(rows, records):
        learned = [t for t in row["labels"] if t != IGNORE_INDEX]
        assert (eos in learned) == record.get("metadata", {}).get("target_ends", True)
    cut = sum(not r["metadata"]["target_ends"] for r in teacher)
    assert len(teacher) == 6 and cut and report["counts"]["teacher_targets_cut"] == synth["cut_at_budget"] == cut

    second = prepare(data, str(tiny_llama_dir), tmp_path / "out2", cfg)
    synth2 = next(s for s in json.loads(second.report.read_text())["steps"] if s["step"] == "synthesis")
    assert synth2["generated"] == 0 and synth2["cached"] == 6  # the rerun regenerates nothing
    assert second.train.read_bytes() == first.train.read_bytes()

    changed = prepare(data, str(tiny_llama_dir), tmp_path / "out3", DataConfig(**{**cfg.__dict__, "synth_max_new_tokens": 5}))
    synth3 = next(s for s in json.loads(changed.report.read_text())["steps"] if s["step"] == "synthesis")
    assert synth3["generated"] == 6  # other generation settings: another cache entry


def test_target_cache_keeps_whether_the_teacher_ended_each_answer(tmp_path):
    """The cache holds each answer with its end; an entry of an older cache, text alone, is written again."""
    from edgeft.data.synthesize import GenerationSettings, TargetCache

    settings = GenerationSettings(64, 1.0, 0)
    cache = TargetCache(tmp_path, "teacher", settings)
    cache.put("whole", "A week has 7 days.", True)
    cache.put("cut", "1. **Set a study", False)
    cache.flush()
    again = TargetCache(tmp_path, "teacher", settings)
    assert again.get("whole") == ("A week has 7 days.", True) and again.get("cut") == ("1. **Set a study", False)
    again.entries[again.key("old")] = "text alone"
    assert again.get("old") is None and again.get("unknown") is None


def _teacher_targets(prepared) -> dict[str, str]:
    return {r["input"]: r["target"] for r in _read_jsonl(prepared.train_records) + _read_jsonl(prepared.eval_records)
            if r.get("metadata", {}).get("target_source") == "teacher"}


def test_sampled_targets_are_seeded_per_prompt(tmp_path, tiny_llama_dir):
    """Sampling (the default) writes the same targets on a fresh cache, whatever else is in the run
    and in whatever order; another seed or greedy decoding writes others."""
    data = write_jsonl(tmp_path / "d.jsonl", NO_TARGET)

    def targets(name: str, records: list[dict] = NO_TARGET, **kw) -> dict[str, str]:
        cfg = DataConfig(max_length=96, synth_max_new_tokens=6, eval_fraction=0.0, cache_dir=tmp_path / name / "cache", **kw)
        src = data if records is NO_TARGET else write_jsonl(tmp_path / f"{name}.jsonl", records)
        return _teacher_targets(prepare(src, str(tiny_llama_dir), tmp_path / name / "out", cfg))

    assert DataConfig().synth_temperature == 1.0
    sampled = targets("a")
    assert len(sampled) == len(NO_TARGET)
    assert targets("b") == sampled
    some = targets("c", records=NO_TARGET[::-2])  # a subset, reversed: each prompt keeps its target
    assert some and all(sampled[k] == v for k, v in some.items())
    assert targets("d", seed=1) != sampled
    assert targets("e", synth_temperature=0.0) != sampled


def test_prepare_layouts(tmp_path, tiny_llama_dir):
    data = write_jsonl(tmp_path / "d.jsonl", ORIGINALS)
    packed = prepare(data, str(tiny_llama_dir), tmp_path / "p", DataConfig(max_length=128, layout="pack", eval_fraction=0))
    unpadded = prepare(data, str(tiny_llama_dir), tmp_path / "n", DataConfig(max_length=128, layout="none", eval_fraction=0))
    rows = _read_jsonl(unpadded.train)
    assert unpadded.n_train == 6 and all(sum(r["attention_mask"]) == len(r["input_ids"]) for r in rows)
    prows = _read_jsonl(packed.train)
    assert packed.n_train < 6 and all(len(r["input_ids"]) == 128 for r in prows)
    learned = sorted(t for r in rows for t in r["labels"] if t != IGNORE_INDEX)
    assert learned == sorted(t for r in prows for t in r["labels"] if t != IGNORE_INDEX)


def test_cli_prepare(tmp_path, tiny_llama_dir):
    from click.testing import CliRunner

    from edgeft.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", ORIGINALS + [{"input": "{{broken"}])
    data.write_text(data.read_text() + "not json at all\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--quiet", "data", "prepare", str(data), "--model", str(tiny_llama_dir), "--out", str(out),
                                       "--max-length", "96", "--eval-fraction", "0"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad records" in result.output and "line 8: malformed JSON" in result.output
    assert (out / "train.jsonl").is_file() and (out / "data_report.json").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    as_json = CliRunner().invoke(main, ["--quiet", "data", "prepare", str(data), "--model", str(tiny_llama_dir), "--out", str(out),
                                        "--max-length", "96", "--eval-fraction", "0", "--json"])
    assert json.loads(as_json.output)["counts"]["rejected"] == 1


def test_default_prompts_are_varied_and_clean(tok):
    rows = _read_jsonl(DEFAULT_DATA)
    assert len(rows) >= 200
    assert all(set(r) == {"input", "metadata"} for r in rows)  # inputs only: the teacher writes the answers
    cjk = [r for r in rows if re.search(r"[\u4e00-\u9fff]", r["input"]) and r["metadata"]["language"] == "zh"]
    assert len(cjk) >= 80 and len(rows) - len(cjk) >= 120
    assert len({r["metadata"]["task_type"] for r in rows}) >= 8 and len({r["metadata"]["domain"] for r in rows}) >= 10
    an = analyze(None, lambda: tok, DataConfig())
    assert sum(s.removed for s in an.steps) == 0, [s.to_json() for s in an.steps if s.removed]
    assert len(an.records) == len(rows)


@pytest.mark.slow
def test_default_teacher_writes_targets(tmp_path):
    """The real default model writes answers through llama.cpp; a capped run stays cheap and reruns from cache."""
    cfg = DataConfig(synth_max_records=4, synth_max_new_tokens=24, cache_dir=tmp_path / "cache", eval_fraction=0.0)
    first = prepare(None, "default", tmp_path / "out", cfg)
    records = _read_jsonl(first.train_records)
    assert len(records) == 4 and all(len(r["target"]) > 3 for r in records)
    second = prepare(None, "default", tmp_path / "out2", cfg)
    synth = next(s for s in json.loads(second.report.read_text())["steps"] if s["step"] == "synthesis")
    assert synth["generated"] == 0 and synth["cached"] == 4


def test_teacher_threads_default_to_the_cores_no_other_process_uses():
    from edgeft.data.synthesize import free_cores

    assert free_cores(others=0.0, cores=2) == 2  # a quiet machine: both cores
    assert free_cores(others=0.2, cores=2) == 2
    assert free_cores(others=1.1, cores=2) == 1  # another job on one core
    assert free_cores(others=6.0, cores=2) == 1  # never fewer than one
    assert free_cores(others=2.0, cores=16) == 14


def test_the_builds_own_finished_work_does_not_cost_the_teacher_a_core(monkeypatch):
    """The load average still counts, for a minute, what the build's own earlier stages did (3.0 on a
    quiet two-core machine after the student search); the teacher's threads are chosen from what
    other processes do while it waits."""
    import os

    from edgeft.data.synthesize import free_cores

    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    assert free_cores(cores=2) == 2 or _others_busy()


def _others_busy() -> bool:
    """True when other processes really keep a core busy now (a shared machine), where 1 is right."""
    import time

    from edgeft.bench.machine import OtherLoad

    with OtherLoad() as watch:
        time.sleep(1.0)
    return watch.cores is None or watch.cores >= 0.5
