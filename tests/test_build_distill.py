"""`edgeft build` with distillation (the default): data -> distill -> merge -> compile -> bench, reused on rebuild."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.cli import main

QA = [("What colour is the sky?", "The sky is blue on a clear day."), ("Add 2 and 3.", "2 plus 3 is 5."),
      ("Name a fruit.", "An apple is a fruit."), ("Translate hello to French.", "Bonjour means hello."),
      ("What do bees make?", "Bees make honey."), ("Is ice cold?", "Yes, ice is cold."),
      ("Write a greeting.", "Hello, nice to meet you!"), ("Where do fish live?", "Fish live in water."),
      ("天空是什么颜色？", "天空是蓝色的。"), ("What is a cat?", "A cat is a small pet animal."),
      ("Count to three.", "One, two, three."), ("What melts ice?", "Heat melts ice into water.")]


def _distinct_pairs(n: int) -> list[tuple[str, str]]:
    """Seeded records different enough to survive near-duplicate removal, so both splits are non-empty."""
    import random

    words = ("river mountain copper violin lantern orbit meadow glacier harbor saffron tunnel quartz falcon ember "
             "canyon velvet prism tundra marble cobalt thistle beacon walnut compass").split()
    rng = random.Random(0)
    pairs = []
    for _ in range(n):
        a, b, c, d = rng.sample(words, 4)
        pairs.append((f"Describe the {a} near the {b}.", f"The {a} rests beside a {c} and a {d}."))
    return pairs


@pytest.fixture(scope="module")
def distilled_build(tiny_llama_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill-build")
    data = tmp / "qa.jsonl"
    data.write_text("".join(json.dumps({"input": q, "target": a}) + "\n" for q, a in QA + _distinct_pairs(48)))
    profile = tmp / "tiny.toml"
    profile.write_text('backend = "gguf"\nquant = "q8_0"\nthreads = 1\n'
                       "[bench]\nprompt_tokens = 16\nnew_tokens = 8\nruns = 2\nwarmup = 1\ncontext = 256\n"
                       "[budget]\npackage_mb = 350\n")
    out = tmp / "out"
    # Forced to a 1-layer student: the source fits this budget, so `--student auto` would not prune it.
    args = ["--quiet", "build", "--model", str(tiny_llama_dir), "--target", str(profile), "--data", str(data), "--out", str(out),
            "--student-layers", "1"]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    return out, first, second


def test_distilling_build_runs_every_stage(distilled_build, tiny_llama_dir):
    out, first, _ = distilled_build
    assert first.exit_code == 0, first.output
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest["stages"]
    for stage in ("data", "distill", "merge", "compile", "export_check", "bench"):
        assert stage in stages, stage
    assert (out / "work" / "data" / "data_report.json").is_file()
    assert (out / "work" / "distill" / "adapter").is_dir()
    merged = json.loads((out / "work" / "merged" / "config.json").read_text())
    teacher = json.loads((tiny_llama_dir / "config.json").read_text())
    assert merged["num_hidden_layers"] == teacher["num_hidden_layers"] // 2  # the student, not the teacher, was compiled
    assert stages["student"]["mode"] == "distill" and stages["student"]["forced"] == {"student_layers": 1}
    # no size guessed from bits per weight before training: the compiled file is measured instead
    student = json.loads((out / "work" / "distill" / "student.json").read_text())
    assert student["estimated_size_bytes"] is None and student["parameters"] > 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["metrics"]["ppl"] > 0
    assert "eval.jsonl" in json.dumps(bench["eval"])  # scored on the data's held-out split
    # q8_0 weighs nothing by an importance matrix, so none is measured
    assert "importance" not in stages and stages["compile"]["importance"].startswith("not used")


def test_rebuild_reuses_data_distill_and_merge(distilled_build):
    out, _, second = distilled_build
    assert second.exit_code == 0, second.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["data"]["reused"] and stages["distill"]["reused"] and stages["merge"]["reused"]


def test_trim_then_distill_trains_the_student_in_trimmed_ids(tiny_llama_dir, tmp_path):
    """`--trim-vocab N` with distillation: the teacher is the trimmed model, the data (tokenized by the
    full tokenizer, some of its tokens dropped) is renumbered, and the student has the trimmed vocabulary."""
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"input": q, "target": a}) + "\n" for q, a in QA + _distinct_pairs(48)))
    profile = tmp_path / "tiny.toml"
    profile.write_text('backend = "gguf"\nquant = "q8_0"\nthreads = 1\n'
                       "[bench]\nprompt_tokens = 16\nnew_tokens = 8\nruns = 1\nwarmup = 0\ncontext = 256\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["--quiet", "build", "--model", str(tiny_llama_dir), "--target", str(profile), "--data", str(data),
                                  "--out", str(out), "--student-layers", "1", "--trim-vocab", "300"])
    assert r.exit_code in (0, 1), r.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["trim"]["kept_vocab"] == 300 < stages["trim"]["source_vocab"]
    assert json.loads((out / "work" / "merged" / "config.json").read_text())["vocab_size"] == 300

    from transformers import AutoTokenizer

    def rows(folder):
        return [json.loads(line) for line in (out / "work" / folder / "train.jsonl").read_text().splitlines()]

    full_tok, trim_tok = AutoTokenizer.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(out / "work" / "trimmed")
    full, trimmed = rows("data"), rows("data-trimmed")
    assert len(full) == len(trimmed)
    longer = 0
    for f, t in zip(full, trimmed):
        ids = [i for i, m in zip(f["input_ids"], f.get("attention_mask") or [1] * len(f["input_ids"])) if m]
        assert max(t["input_ids"]) < 300
        assert trim_tok.decode(t["input_ids"]) == full_tok.decode(ids)  # the same text, renumbered
        assert [x == -100 for x in t["labels"]].count(False) >= [x == -100 for x in f["labels"]].count(False) > 0
        longer += len(t["input_ids"]) > len(ids)
    assert longer  # 300 tokens drop some of the data's: those became several pieces
    bench = json.loads((out / "bench.json").read_text())
    assert bench["metrics"]["kl_vs_source_mean"] > 0  # the student scored against the untrimmed teacher
    assert str(tiny_llama_dir) in bench["eval"]["source_model"] and "untrimmed" in bench["eval"]["source_model"]
    assert stages["distill"]["eval"] is not None
