"""Every input format (JSONL, JSON, CSV, Parquet) and every accepted record shape maps to the standard record."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from edgeft.data.prepare import DataConfig, analyze
from tiny_models import write_jsonl

RECORDS = [
    {"input": "What is the capital of France?", "target": "Paris is the capital.", "metadata": {"task_type": "qa", "domain": "geo"}},
    {"input": "Summarize: edge devices run small models.", "target": "Small models run on edge devices.",
     "metadata": {"task_type": "summarize", "domain": "tech"}},
    {"input": "把这句话翻译成英文：今天天气很好。", "target": "The weather is nice today.", "metadata": {"task_type": "translate", "domain": "general"}},
    {"input": "Write a haiku about a quiet lake at dawn.", "metadata": {"task_type": "instruct", "domain": "poetry"}},
]


def _analyze(path: Path, tok, **cfg):
    return analyze(path, lambda: tok, DataConfig(eval_fraction=0.0, **cfg))


def _as_tuples(an):
    return [(r.input, r.target, {k: v for k, v in r.metadata.items() if k in ("task_type", "domain")}) for r in an.records]


EXPECTED = [(r["input"], r.get("target"), r["metadata"]) for r in RECORDS]


def test_jsonl(tmp_path, tok):
    an = _analyze(write_jsonl(tmp_path / "d.jsonl", RECORDS), tok)
    assert an.format == "jsonl"
    assert _as_tuples(an) == EXPECTED
    assert [r.place for r in an.records] == ["line 1", "line 2", "line 3", "line 4"]


def test_json_array(tmp_path, tok):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS, ensure_ascii=False, indent=1), encoding="utf-8")
    an = _analyze(path, tok)
    assert an.format == "json"
    assert _as_tuples(an) == EXPECTED
    assert an.records[2].place == "item 3"


def test_csv_with_metadata_columns(tmp_path, tok):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["input", "target", "task_type", "metadata.domain"])
        for r in RECORDS:
            w.writerow([r["input"], r.get("target", ""), r["metadata"]["task_type"], r["metadata"]["domain"]])
    an = _analyze(path, tok)
    assert an.format == "csv"
    assert _as_tuples(an) == EXPECTED  # an empty target cell means "no target": the teacher writes it


def test_csv_multiline_cell(tmp_path, tok):
    path = tmp_path / "d.csv"
    path.write_text('input,target\n"def f():\n    return 1","It returns one."\nSecond question here?,Yes.\n', encoding="utf-8")
    an = _analyze(path, tok)
    assert [r.input for r in an.records] == ["def f():\n    return 1", "Second question here?"]
    assert [r.place for r in an.records] == ["line 2", "line 4"]


def test_parquet(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"input": r["input"], "target": r.get("target"), "metadata": r["metadata"]} for r in RECORDS])
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    an = _analyze(path, tok)
    assert an.format == "parquet"
    assert _as_tuples(an) == EXPECTED
    assert an.records[3].place == "row 4"


def test_alpaca_shape(tmp_path, tok):
    rows = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue, yellow."},
            {"instruction": "Correct the spelling.", "input": "recieve the pakage"}]
    an = _analyze(write_jsonl(tmp_path / "a.jsonl", rows), tok)
    assert [(r.input, r.target, r.shape) for r in an.records] == [
        ("Translate to French.\n\nGood morning", "Bonjour", "alpaca"),
        ("Name three primary colors.", "Red, blue, yellow.", "alpaca"),
        ("Correct the spelling.\n\nrecieve the pakage", None, "alpaca"),  # no output: the teacher writes it
    ]


def test_prompt_completion_shape(tmp_path, tok):
    rows = [{"prompt": "Two plus two is", "completion": "four."}, {"prompt": "Describe a calm sea at night."}]
    an = _analyze(write_jsonl(tmp_path / "p.jsonl", rows), tok)
    assert [(r.input, r.target, r.shape) for r in an.records] == [
        ("Two plus two is", "four.", "prompt/completion"), ("Describe a calm sea at night.", None, "prompt/completion")]


def test_messages_shape(tmp_path, tok):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is rain made of?"},
                      {"role": "assistant", "content": "Water droplets."}]},
        {"messages": [{"role": "user", "content": "Name a fast land animal."}]},
    ]
    an = _analyze(write_jsonl(tmp_path / "m.jsonl", rows), tok)
    assert [(r.input, r.target, r.shape) for r in an.records] == [
        ("What is rain made of?", "Water droplets.", "messages"), ("Name a fast land animal.", None, "messages")]
    assert an.records[0].metadata["system"] == "Be brief."


def test_field_mapping(tmp_path, tok):
    rows = [{"question": "Why do leaves change color?", "answer": "Chlorophyll breaks down.", "id": 7}]
    an = _analyze(write_jsonl(tmp_path / "f.jsonl", rows), tok, field_map=(("input", "question"), ("target", "answer")))
    assert [(r.input, r.target) for r in an.records] == [("Why do leaves change color?", "Chlorophyll breaks down.")]
    assert "question" in an.fields and "answer" in an.fields


def test_field_mapping_via_cli(tmp_path, tiny_llama_dir):
    from click.testing import CliRunner

    from edgeft.cli import main

    path = tmp_path / "f.csv"
    path.write_text("question,answer\nWhy is the sea salty?,Minerals from rocks.\nHow do magnets work?,\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["data", "inspect", str(path), "--model", str(tiny_llama_dir), "--json",
                                       "--field", "input=question", "--field", "target=answer", "--augment-ratio", "1"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["counts"]["kept"] == 2 and info["counts"]["with_target"] == 1
    bad = CliRunner().invoke(main, ["data", "inspect", str(path), "--model", str(tiny_llama_dir), "--field", "question"])
    assert bad.exit_code == 2 and "--field" in bad.output


@pytest.mark.parametrize("command", [["data"], ["data", "inspect"], ["data", "prepare"]])
def test_data_help(command):
    from click.testing import CliRunner

    from edgeft.cli import main

    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_inspect_counts_target_tokens_as_prepare_trains_them(tmp_path, tiny_llama_dir):
    """One answer, one count: `data inspect` once counted the target's text alone and `data prepare` the
    target with the end of turn the template adds (2 against 4 on the same answer)."""
    from edgeft.data.prepare import DataConfig, inspect_data, prepare

    rows = [{"input": f"Question number {i} about the sea?", "target": f"Answer {i} is salt water."} for i in range(6)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    config = DataConfig(eval_fraction=0.0, augment_ratio=1.0)
    seen = inspect_data(path, str(tiny_llama_dir), config)["tokens"]["target"]
    report = json.loads(prepare(path, str(tiny_llama_dir), tmp_path / "out", config).report.read_text())
    assert seen == report["tokens"]["target"]
    assert report["counts"]["train_examples"] == 6


def test_an_answer_column_under_another_name_is_named_not_silently_left_to_the_teacher(tmp_path, tiny_llama_dir):
    """`{"prompt", "answer"}` records read as prompt/completion without a completion: the answers went
    unused and the teacher wrote new ones without a word; `--field target=answer` was dropped by the
    same shape; a mapped field no record has (a typo) passed silently."""
    from click.testing import CliRunner

    from edgeft.cli import main

    path = write_jsonl(tmp_path / "pa.jsonl", [{"prompt": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."}
                                               for i in range(4)])
    plain = CliRunner().invoke(main, ["data", "inspect", str(path), "--model", str(tiny_llama_dir), "--json"])
    info = json.loads(plain.output)
    assert info["fields_unused"] == ["answer"] and info["counts"]["with_target"] == 0
    said = CliRunner().invoke(main, ["data", "inspect", str(path), "--model", str(tiny_llama_dir)])
    assert "fields no record uses: answer" in said.output and "--field target=NAME" in said.output
    mapped = CliRunner().invoke(main, ["data", "inspect", str(path), "--model", str(tiny_llama_dir), "--json",
                                       "--field", "target=answer"])
    info = json.loads(mapped.output)
    assert info["counts"]["with_target"] == 4 and info["fields_unused"] == []
    typo = CliRunner().invoke(main, ["data", "inspect", str(path), "--model", str(tiny_llama_dir), "--field", "target=answr"])
    assert typo.exit_code == 2 and "--field" in typo.output and "target=answr" in typo.output
    assert "fields found: answer, prompt" in typo.output


def test_a_record_the_augmentation_cap_drops_says_why_in_the_user_s_terms():
    from edgeft.data.prepare import Step, cap_augmented
    from edgeft.data.schema import Record

    records = [Record(f"q{i}", f"a{i}", place=f"line {i}", key=f"k{i}") for i in range(2)]
    records += [Record(f"p{i}", None, place=f"line {i + 2}", key=f"m{i}") for i in range(5)]
    step = Step("augment_cap")
    kept = cap_augmented(records, 1.0, step)
    assert len(kept) == 4 and step.removed == 3
    assert all(reason.startswith("no target of its own") and "--augment-ratio 1 x the 2 training records with targets" in reason
               for reason in step.reasons)
