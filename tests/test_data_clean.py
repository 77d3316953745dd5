"""Cleaning: normalization, garbage, exact and near duplicates, length filters, and the hash split."""

from __future__ import annotations

import unicodedata

import pytest

from edgeft.data.clean import garbage_reason, normalize_text
from edgeft.data.dedup import near_duplicates
from edgeft.data.prepare import DataConfig, analyze
from edgeft.data.split import is_eval
from tiny_models import write_jsonl

CFG = DataConfig()


def test_normalize_nfc_controls_and_whitespace():
    decomposed = "cafe\u0301"  # e + combining acute
    assert normalize_text(decomposed) == unicodedata.normalize("NFC", decomposed) == "caf\u00e9"
    assert normalize_text("  a \t\u00a0 b\u200b\x07c  \r\n\n\n\nnext\u3000line  ") == "a bc\n\nnext line"
    assert normalize_text("def f():\n    return 1") == "def f():\n    return 1"  # indentation is kept


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("12345 678", "no letters"), ("?!?! ... ---", "no letters"), ("aaaaaaaaaaaa", "repeated characters"),
    ("哈哈哈哈哈哈哈哈", "repeated characters"), ("ababababababab", "repeated characters"),
    ("What is 2 + 2?", None), ("天气很好。", None), ("ok", None), ("Say aaaa", None),
])
def test_garbage(text, reason):
    assert garbage_reason(text, max_char_share=CFG.garbage_max_char_share, min_distinct_chars=CFG.garbage_min_distinct_chars) == reason


@pytest.mark.parametrize("text,reason", [
    ("4.", None), ("0", None), ("1", None), ("1945", None), ("3.14", None), ("1776-07-04", None), ("1,000,000", None),
    ("100000000000000", None), ("50%", None), (".5", None), ("$5", None), ("\u22125", None), ("2+2=4", None), ("?!?! ... ---", "no letters or digits"), ("!!!!!!!!", "no letters or digits"),
    ("zzzzzzzzzzzz", "repeated characters"),
])
def test_an_answer_that_is_a_number_is_not_garbage(text, reason):
    """Labels, years and sums are answers; the filter is for noise."""
    assert garbage_reason(text, max_char_share=CFG.garbage_max_char_share, min_distinct_chars=CFG.garbage_min_distinct_chars,
                          numbers_ok=True) == reason


def test_exact_duplicates_after_normalization(tmp_path, tok):
    rows = [{"input": "What is the tallest mountain?", "target": "Everest."},
            {"input": "  What is the   tallest mountain? ", "target": "Everest."},  # same after whitespace cleanup
            {"input": "WHAT IS THE TALLEST MOUNTAIN?", "target": "EVEREST."},  # same after case folding
            {"input": "What is the tallest mountain?", "target": "Mount Everest, 8849 m."}]  # different target: kept
    an = analyze(write_jsonl(tmp_path / "d.jsonl", rows), lambda: tok, DataConfig(eval_fraction=0))
    exact = next(s for s in an.steps if s.name == "exact_duplicates")
    assert exact.removed == 2
    assert [e["duplicate_of"] for e in exact.examples] == ["line 1", "line 1"]
    assert [r.place for r in an.records] == ["line 1", "line 4"]


def test_near_duplicates_minhash():
    base = "Explain how a refrigerator keeps food cold by moving heat from inside to the outside of the box."
    texts = [base, base.replace("keeps food cold", "keeps the food cold"), "Write a poem about the sea and the wind at night.",
             "把这段话翻译成英文：今天下午我们在公园里散步，天气非常好。", "把这段话翻译成英文：今天下午我们在公园里散步，天气非常好！"]
    dupes = near_duplicates(texts, threshold=0.8, num_perm=128, shingle=5)
    assert dupes == {1: 0, 4: 3}
    assert near_duplicates(texts, threshold=0.8, num_perm=128, shingle=5) == dupes  # deterministic


def test_near_duplicates_reported_in_analysis(tmp_path, tok):
    rows = [{"input": "Describe the water cycle in four short steps for a school project."},
            {"input": "Describe the water cycle in four short steps for a school project!"},
            {"input": "List three ways to save electricity at home."}]
    an = analyze(write_jsonl(tmp_path / "d.jsonl", rows), lambda: tok, DataConfig(eval_fraction=0))
    near = next(s for s in an.steps if s.name == "near_duplicates")
    assert near.examples == [{"place": "line 2", "reason": "near duplicate", "duplicate_of": "line 1"}]
    assert len(an.records) == 2


def test_length_filters(tmp_path, tok):
    long_input = "tell me about the quick brown fox " * 40
    rows = [{"input": "A short fine question?", "target": "Yes."}, {"input": long_input}, {"input": "Another good question?",
            "target": "word " * 200}]
    an = analyze(write_jsonl(tmp_path / "d.jsonl", rows), lambda: tok, DataConfig(eval_fraction=0, max_length=128))
    lengths = next(s for s in an.steps if s.name == "length")
    assert {e["place"]: e["reason"] for e in lengths.examples} == {
        "line 2": "prompt too long for max_length", "line 3": "prompt + target too long for max_length"}
    assert [r.place for r in an.records] == ["line 1"]


def test_garbage_records_removed_with_reason(tmp_path, tok):
    rows = [{"input": "Good question about rivers?"}, {"input": "!!!!!!!!"}, {"input": "Why is grass green?", "target": "zzzzzzzzzzzz"}]
    an = analyze(write_jsonl(tmp_path / "d.jsonl", rows), lambda: tok, DataConfig(eval_fraction=0))
    garbage = next(s for s in an.steps if s.name == "garbage")
    assert {e["place"]: e["reason"] for e in garbage.examples} == {"line 2": "input: no letters", "line 3": "target: repeated characters"}


def test_split_is_deterministic_and_stable_when_records_are_added(tmp_path, tok):
    rows = [{"input": f"Question number {i}: what is {i} times {i + 3}?"} for i in range(400)]
    cfg = DataConfig(eval_fraction=0.2)
    first = analyze(write_jsonl(tmp_path / "a.jsonl", rows), lambda: tok, cfg)
    again = analyze(write_jsonl(tmp_path / "b.jsonl", list(reversed(rows))), lambda: tok, cfg)
    split1 = {r.input: r.eval for r in first.records}
    assert len(split1) == 400
    assert split1 == {r.input: r.eval for r in again.records}  # order does not matter
    n_eval = sum(split1.values())
    assert 50 <= n_eval <= 110  # about 20% of 400
    more = rows + [{"input": f"An added question {i}: name a color that starts with {chr(65 + i % 26)}."} for i in range(200)]
    grown = analyze(write_jsonl(tmp_path / "c.jsonl", more), lambda: tok, cfg)
    split2 = {r.input: r.eval for r in grown.records}
    assert all(split2[k] == v for k, v in split1.items())  # no existing record changed side
    assert all(not is_eval(k, 0.0, 0) for k in split1)


def test_eval_fraction_changes_split_size(tmp_path, tok):
    rows = [{"input": f"Item {i}: describe the number {i * 7} in words."} for i in range(300)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    sizes = [sum(r.eval for r in analyze(path, lambda: tok, DataConfig(eval_fraction=f)).records) for f in (0.0, 0.1, 0.5)]
    assert sizes[0] == 0 and sizes[0] < sizes[1] < sizes[2]
