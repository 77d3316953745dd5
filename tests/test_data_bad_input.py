"""Bad data files: a whole-file problem ends the run with one line (file, place, reason) and exit 2;
a bad record is rejected with a count and its reason, or ends the run under --strict."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeft.data.prepare import DataConfig, analyze
from edgeft.data.readers import DataFileError

GOOD = b'{"input": "What is the boiling point of water at sea level?", "target": "100 degrees Celsius."}\n'
GOOD2 = b'{"input": "Name the largest planet in the solar system.", "target": "Jupiter."}\n'


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeft.cli", *args], capture_output=True, text=True)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# (file name, content, words the one error line must contain) -- each a whole-file problem
WHOLE_FILE_CASES = {
    "empty_file": ("empty.jsonl", b"", ["empty file"]),
    "blank_lines_only": ("blank.jsonl", b"\n  \n\n", ["empty file"]),
    "empty_json_array": ("empty.json", b"[]", ["empty array"]),
    "wrong_format_array_in_jsonl": ("arr.jsonl", b'[{"input": "hi"}]', ["JSON array", "line 1"]),
    "wrong_format_text_in_jsonl": ("text.jsonl", b"just some words\nmore words\n", ["not JSON Lines", "line 1"]),
    "wrong_format_binary": ("bin.jsonl", b"\x00\x01\x02\x03PK\x03\x04" * 10, ["binary data"]),
    "wrong_format_jsonl_named_json": ("lines.json", GOOD + GOOD2, ["malformed JSON", "line 2", ".jsonl"]),
    "wrong_format_csv_named_parquet": ("table.parquet", b"input,target\nhello there,hi\n", ["not a Parquet file"]),
    "corrupt_parquet": ("bad.parquet", b"PAR1" + b"\x00garbage" * 20 + b"PAR1", ["corrupt Parquet"]),
    "wrong_format_json_in_csv": ("data.csv", GOOD + GOOD2, ["looks like JSON", "line 1"]),
    "json_not_an_array": ("obj.json", b'{"input": "a lone object"}', ["array of records"]),
    "malformed_json": ("broken.json", b'[\n {"input": "one"},\n {"input": "two",}\n]', ["malformed JSON", "line 3"]),
    "invalid_utf8_csv": ("latin.csv", "input,target\ncafé time,yes\n".encode("utf-8") + b"caf\xe9 au lait,no\n",
                         ["invalid UTF-8", "line 3"]),
    "csv_header_only": ("header.csv", b"input,target\n", ["no data rows"]),
    "csv_duplicate_columns": ("dup.csv", b"input,input\na question here,another\n", ["duplicate column names", "line 1"]),
    "unsupported_extension": ("notes.txt", b"hello", ["unsupported file type", ".txt"]),
    "all_records_bad": ("allbad.jsonl", b'{"text": "no input field"}\n{"input": 3}\n', ["no usable records", "line 1"]),
}


@pytest.mark.parametrize("case", sorted(WHOLE_FILE_CASES))
def test_whole_file_problem_exits_2(case, tmp_path, tiny_llama_dir):
    name, content, needles = WHOLE_FILE_CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    proc = _cli(["data", "inspect", str(path), "--model", str(tiny_llama_dir)])
    _assert_one_line_error(proc, str(path), *needles)


def test_missing_file_exits_2(tmp_path, tiny_llama_dir):
    out = tmp_path / "out"
    proc = _cli(["data", "prepare", str(tmp_path / "nope.jsonl"), "--model", str(tiny_llama_dir), "--out", str(out)])
    _assert_one_line_error(proc, "nope.jsonl", "no such file")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("flag", ["--data", "--trim-vocab"])
def test_build_with_a_missing_data_file_exits_2_before_any_stage(flag, tmp_path, tiny_llama_dir):
    out = tmp_path / "out"
    proc = _cli(["build", "--model", str(tiny_llama_dir), flag, str(tmp_path / "nope.jsonl"), "--out", str(out)])
    _assert_one_line_error(proc, "nope.jsonl", "no such data file")
    assert not (out / "work").exists()  # refused before the source was even read


@pytest.mark.parametrize("name, content, needle", [("empty.jsonl", b"", "empty file"),
                                                     ("allbad.jsonl", b'{"text": "no input field"}\n', "no usable records")])
def test_build_with_unusable_data_exits_2_before_any_stage(name, content, needle, tmp_path, tiny_llama_dir):
    """Found in a second, not after the minutes a build spends on its model before its data stage."""
    data, out = tmp_path / name, tmp_path / "out"
    data.write_bytes(content)
    proc = _cli(["build", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out), "--no-bench"])
    _assert_one_line_error(proc, name, needle)
    assert not out.exists()


def test_a_record_cut_short_is_placed_where_it_stops(tmp_path):
    """The line end is not part of the record: the column is where the text stops, not 1."""
    from edgeft.data.readers import read_raw

    path = tmp_path / "cut.jsonl"
    path.write_bytes(GOOD + b'{"input": "broken", \n' + b'{"input": "tab\there"}\n')
    problems = [r.problem for r in read_raw(path) if r.problem]
    assert problems[0].startswith("malformed JSON at column 21: Expecting property name")
    assert "raw control character" in problems[1] and not problems[1].endswith(" at")


# (file content, place, reason) -- each one bad record among good ones
RECORD_CASES = {
    "malformed_line": (GOOD + b'{"input": "unterminated\n' + GOOD2, "line 2", "malformed JSON"),
    "missing_required_field": (GOOD + b'{"target": "an answer without a question"}\n' + GOOD2, "line 2", "missing required field 'input'"),
    "wrong_type_input": (GOOD + b'{"input": ["a", "list"]}\n' + GOOD2, "line 2", "field 'input' must be a string, got list"),
    "wrong_type_target": (GOOD + b'{"input": "Count to three.", "target": 123}\n' + GOOD2, "line 2", "field 'target' must be a string, got int"),
    "wrong_type_metadata": (GOOD + b'{"input": "Count to three.", "metadata": "qa"}\n' + GOOD2, "line 2", "'metadata' must be an object"),
    "record_not_object": (GOOD + b'"just a string"\n' + GOOD2, "line 2", "must be an object"),
    "invalid_utf8_line": (GOOD + b'{"input": "caf\xe9"}\n' + GOOD2, "line 2", "invalid UTF-8"),
    "bad_message_role": (GOOD + b'{"messages": [{"role": "robot", "content": "beep"}]}\n' + GOOD2, "line 2", "role 'robot'"),
}


@pytest.mark.parametrize("case", sorted(RECORD_CASES))
def test_bad_record_is_counted_not_dropped_silently(case, tmp_path, tok):
    content, place, reason = RECORD_CASES[case]
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    an = analyze(path, lambda: tok, DataConfig(eval_fraction=0.0))
    assert an.n_read == 3
    assert len(an.records) == 2
    assert an.rejected.removed == 1
    assert an.rejected.examples == [{"place": place, "reason": an.rejected.examples[0]["reason"]}]
    assert reason in an.rejected.examples[0]["reason"]
    with pytest.raises(DataFileError) as err:
        analyze(path, lambda: tok, DataConfig(strict=True))
    assert place in err.value.one_line() and reason in err.value.one_line() and str(path) in err.value.one_line()


def test_csv_row_with_wrong_cell_count(tmp_path, tok):
    path = tmp_path / "d.csv"
    path.write_text("input,target\nWhat is two plus two?,Four.\nan extra,cell,here\nName a red fruit.,Apple.\n", encoding="utf-8")
    an = analyze(path, lambda: tok, DataConfig(eval_fraction=0.0))
    assert len(an.records) == 2
    assert an.rejected.examples == [{"place": "line 3", "reason": "3 cells, the header has 2 columns"}]


def test_strict_via_cli_exits_2_and_default_reports_count(tmp_path, tiny_llama_dir):
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD + b"{oops\n" + GOOD2 + b'{"input": 7}\n')
    proc = _cli(["data", "inspect", str(path), "--model", str(tiny_llama_dir), "--strict"])
    _assert_one_line_error(proc, str(path), "line 2", "malformed JSON", "--strict")
    proc = _cli(["data", "inspect", str(path), "--model", str(tiny_llama_dir), "--json"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["counts"]["rejected"] == 2 and info["counts"]["kept"] == 2
    assert [e["place"] for e in info["steps"][0]["examples"]] == ["line 2", "line 4"]


def test_bad_flag_value_exits_2(tmp_path, tiny_llama_dir):
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD)
    proc = _cli(["data", "inspect", str(path), "--model", str(tiny_llama_dir), "--eval-fraction", "1.5"])
    _assert_one_line_error(proc, "--eval-fraction: must be in [0, 1)")  # the flag the user typed, not the config key


@pytest.mark.parametrize("args, needle", [
    (["--eval-data", "{eval}"], "input_ids"),
    (["--student-layers", "0"], "--student-layers: must be at least 1"),
])
def test_a_bad_build_flag_is_refused_before_any_stage(args, needle, tmp_path, tiny_llama_dir):
    """Not after the source is read and the model compiled: and named as the flag, not a config key."""
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"input": "text, not token ids"}\n')
    out = tmp_path / "out"
    proc = _cli(["build", "--model", str(tiny_llama_dir), "--out", str(out), *[a.format(eval=bad) for a in args]])
    _assert_one_line_error(proc, needle)
    assert not out.exists()
