"""Quality against the source model the user gave: measured on every build, shown first, budgeted."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.bench import budgets, perplexity
from edgeft.cli import main
from edgeft.config import Budget
from edgeft.bench.source_model import SourceRunner
from tiny_models import tiny_profile


@pytest.fixture(scope="module")
def tiny_q4(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama built at q4_0 with its source: a quantized artifact that really differs from it."""
    tmp = tmp_path_factory.mktemp("src-quality")
    out = tmp / "out"
    profile = tiny_profile(tmp, quant="q4_0", budget="package_mb = 350\nppl_vs_source_pct = 1000")
    result = CliRunner().invoke(main, ["build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--out", str(out)])
    return out, result


def test_the_source_against_itself_scores_zero_and_a_quantized_artifact_does_not(tiny_llama_dir, tiny_q4):
    from edgeft.backends.gguf.backend import LlamaCppRunner
    from edgeft.bench.source_model import SourceRunner

    source = SourceRunner(tiny_llama_dir)
    ids = source.tokenize("The quick brown fox jumps over the lazy dog. " * 6)
    same = perplexity.score(source, ids, 32, source=source)
    assert same["kl_vs_source_mean"] == pytest.approx(0.0, abs=1e-9)
    assert same["ppl_vs_source_pct"] == pytest.approx(0.0, abs=1e-9) and same["top1_vs_source_pct"] == 100.0

    out, result = tiny_q4
    assert result.exit_code == 0, result.output
    artifact = LlamaCppRunner(out / "model-q4_0.gguf", threads=1, context=128)
    try:
        quantized = perplexity.score(artifact, ids, 32, source=source)
    finally:
        artifact.close()
    assert quantized["kl_vs_source_mean"] > 1e-4
    assert quantized["source_ppl"] == pytest.approx(same["ppl"], rel=1e-6)


def test_every_build_reports_quality_against_the_source_first_with_answers(tiny_q4, tiny_llama_dir):
    out, result = tiny_q4
    bench = json.loads((out / "bench.json").read_text())
    m = bench["metrics"]
    for key in ("source_ppl", "ppl_vs_source_pct", "kl_vs_source_mean", "kl_vs_source_p99", "top1_vs_source_pct",
                "answer_ppl_vs_source_pct", "answer_ppl_vs_source_mean_pct", "answers_same"):
        assert key in m, key
    assert m["kl_vs_source_mean"] > 0 and m["ppl_increase_pct"] is not None  # both comparisons, each named
    assert bench["eval"]["source_model"] == str(tiny_llama_dir)
    from edgeft.bench.source_model import CHAT_PROMPTS

    assert [a["prompt"] for a in bench["answers"]] == list(CHAT_PROMPTS)
    assert all(isinstance(a["source"], str) and isinstance(a["artifact"], str) for a in bench["answers"])
    assert [b["budget"] for b in bench["budget"]][-1] == "ppl_vs_source_pct"
    text = result.output
    assert text.index("quality against the source") < text.index("time to first token")
    assert "source:   " in text and "artifact: " in text and "quantization loss alone" in text


def test_the_source_budget_line_fails_past_its_limit():
    lines = budgets.check({"ppl_vs_source_pct": 74.0}, Budget(ppl_vs_source_pct=50))
    assert [(b.key, b.status) for b in lines] == [("ppl_vs_source_pct", "FAIL")]
    assert not budgets.all_pass(lines)
    assert budgets.check({"ppl_vs_source_pct": 12.0}, Budget(ppl_vs_source_pct=50))[0].status == "PASS"


def test_every_shipped_profile_budgets_quality_against_the_source():
    from edgeft.config import load_target, shipped_targets

    for name in shipped_targets():
        assert load_target(name).budget.ppl_vs_source_pct is not None, name
        assert load_target(name).budget.answer_ppl_vs_source_pct is not None, name


def test_a_bare_prompt_gets_the_bos_its_tokenizer_adds(tiny_model_dirs, tmp_path):
    """No chat template (Gemma 3 270M's GGUF has none): the side-by-side prompt starts with the BOS the
    tokenizer adds by itself, as the model was trained; a templated prompt carries its own."""
    import json
    import shutil

    from tokenizers import Tokenizer, processors

    from edgeft.bench.source_model import SourceRunner

    folder = tmp_path / "bare"
    shutil.copytree(tiny_model_dirs["Gemma3ForCausalLM"], folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok.save(str(folder / "tokenizer.json"))
    runner = SourceRunner(folder)
    assert not runner.tokenizer.chat_template
    assert runner.chat_ids("Hello there")[0] == bos == runner.own_chat_ids("Hello there")[0]
    templated = SourceRunner(tiny_model_dirs["LlamaForCausalLM"])
    assert templated.chat_ids("Hello there") == templated.tokenize(
        templated.tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                                tokenize=False))


class _Says:
    """An artifact runner that answers every prompt with fixed ids: what a shipped file says, pinned."""

    def __init__(self, answer: list[int] | None = None, source=None):
        self.answer, self.source = answer, source

    def generate(self, token_ids, new_tokens):
        from edgeft.backends.base import Generation

        tokens = self.answer if self.answer is not None else self.source.greedy(token_ids, new_tokens)
        return Generation(prompt_tokens=len(token_ids), tokens=list(tokens)[:new_tokens], token_times=[0.0] * new_tokens)


def test_an_answer_the_source_would_never_give_is_scored_far_off_and_its_own_answer_zero(tiny_llama_dir):
    """The default q4_k_m answered "La femme de France" for the capital of France while perplexity over a
    text passed (+7 %): the source's own scoring of each answer is what sees it. The source's own answer
    scores exactly 0; the ids it finds least likely score far above any budget."""
    import numpy as np

    from edgeft.bench.source_model import answer_metrics, side_by_side

    source = SourceRunner(tiny_llama_dir)
    prompts = ("Hello there", "The quick brown fox")
    itself = side_by_side(source, _Says(source=source), prompts, new_tokens=12)
    assert all(r["same"] and r["ppl_vs_source_pct"] == 0.0 for r in itself)
    assert answer_metrics(itself)["answer_ppl_vs_source_pct"] == 0.0

    prompt_ids = source.own_chat_ids(prompts[0])
    unlikely = int(np.argmin(source.logits(prompt_ids)[-1]))
    off = side_by_side(source, _Says(answer=[unlikely] * 12), prompts, new_tokens=12)
    assert not any(r["same"] for r in off)
    assert all(r["artifact_nll_per_token"] > r["source_nll_per_token"] for r in off)
    metrics = answer_metrics(off)
    assert metrics["answer_ppl_vs_source_pct"] > 100 and metrics["answers_same"] == 0
    assert metrics["answer_ppl_vs_source_pct"] == max(r["ppl_vs_source_pct"] for r in off)
    assert budgets.check(metrics, Budget(answer_ppl_vs_source_pct=50))[0].status == "FAIL"
    assert budgets.check(answer_metrics(itself), Budget(answer_ppl_vs_source_pct=50))[0].status == "PASS"


def test_the_source_s_own_file_is_scored_beside_the_artifact_and_sets_the_floor(tiny_llama_dir):
    """The default model's own Q4_1 file, run by llama.cpp, answers the France prompt in French: the
    runtime, not the build. The source's own file is scored as the artifact is, and the count says on
    how many prompts the shipped file's answer is no further from the source's than that."""
    import numpy as np

    from edgeft.bench.source_model import answer_metrics, side_by_side

    source = SourceRunner(tiny_llama_dir)
    prompts = ("Hello there", "The quick brown fox")
    unlikely = int(np.argmin(source.logits(source.own_chat_ids(prompts[0]))[-1]))
    rows = side_by_side(source, _Says(answer=[unlikely] * 12), prompts, new_tokens=12, source_file=_Says(source=source))
    assert all(r["source_file_same"] and r["source_file_ppl_vs_source_pct"] == 0.0 for r in rows)
    assert all(r["source_file"] == r["source"] for r in rows)
    m = answer_metrics(rows)
    assert m["answer_source_file_ppl_vs_source_pct"] == 0.0 and m["answers_no_worse_than_source_file"] == 0

    # the other way round: the shipped file says what the source says, its own file does not
    flipped = side_by_side(source, _Says(source=source), prompts, new_tokens=12, source_file=_Says(answer=[unlikely] * 12))
    m = answer_metrics(flipped)
    assert m["answer_source_file_ppl_vs_source_pct"] > 100 and m["answers_no_worse_than_source_file"] == 2
    assert "answer_source_file_ppl_vs_source_pct" not in answer_metrics(side_by_side(source, _Says(source=source), prompts[:1],
                                                                                    new_tokens=4))


def test_bench_runs_the_source_s_own_file_through_the_artifact_s_runtime(tiny_q4, tiny_llama_dir, tiny_gguf, tmp_path):
    """`--source-file`: the model's own GGUF, answered by llama.cpp like the shipped file; a file of another
    format is one line, exit 2, before any bench."""
    out, built = tiny_q4
    assert built.exit_code == 0, built.output
    report = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(out / "model-q4_0.gguf"), "--target", str(out / "target.toml"),
                                       "--source", str(tiny_llama_dir), "--source-file", str(tiny_gguf), "--json", str(report)])
    assert result.exit_code in (0, 1), result.output
    bench = json.loads(report.read_text())
    assert bench["eval"]["source_file"] == str(tiny_gguf)
    assert sum(bench["eval"]["source_file_answers"][k] for k in ("cached", "generated")) == len(bench["answers"])
    assert all("source_file" in a and "source_file_same" in a for a in bench["answers"])
    assert bench["metrics"]["answers_no_worse_than_source_file"] <= len(bench["answers"])
    assert "src file: " in result.output and "the source's own file in this runtime: worst answer" in result.output

    wrong = CliRunner().invoke(main, ["bench", str(out / "model-q4_0.gguf"), "--target", str(out / "target.toml"),
                                      "--source", str(tiny_llama_dir), "--source-file", str(tiny_llama_dir)])
    assert wrong.exit_code == 2 and "not a gguf file" in wrong.output and "--source-file" in wrong.output
    assert "Traceback" not in wrong.output and "latency" not in wrong.output
    alone = CliRunner().invoke(main, ["bench", str(out / "model-q4_0.gguf"), "--source-file", str(tiny_gguf)])
    assert alone.exit_code == 2 and "applies only with --source" in alone.output


def test_the_source_s_own_file_answers_are_kept_and_asked_again_only_when_something_changes(tiny_gguf, tmp_path):
    """The own file's answers depend on its bytes, the prompt, the budget and the runtime: a second bench
    reads them without loading the file; other bytes, threads or prompts answer again, and so does a
    cache that cannot be read."""
    import shutil

    from edgeft.backends.base import Artifact
    from edgeft.backends.gguf.backend import LlamaCppRunner
    from edgeft.bench.own_answers import OwnFileAnswers
    from edgeft.config import load_target

    target, cache = load_target(str(tiny_profile(tmp_path))), tmp_path / "cache"
    own = Artifact(path=tiny_gguf, backend="gguf", quant="f16", files=(tiny_gguf,))
    ids = [5, 6, 7, 8]
    first = OwnFileAnswers(own, target, cache)
    answer = first.generate(ids, 6).tokens
    assert (first.misses, first.hits) == (1, 0) and first.runner is not None
    first.close()
    direct = LlamaCppRunner(tiny_gguf, threads=target.resolved_threads(), context=target.bench.context)
    assert direct.generate(ids, 6).tokens == answer  # what the runtime says, not a copy of something else
    direct.close()

    again = OwnFileAnswers(own, target, cache)
    assert again.generate(ids, 6).tokens == answer and (again.hits, again.misses) == (1, 0)
    assert again.runner is None  # not even loaded
    assert again.generate(ids, 7).tokens[:6] == answer and again.misses == 1  # another budget is asked again
    again.close()

    other = tmp_path / "other.gguf"
    shutil.copyfile(tiny_gguf, other)
    with open(other, "r+b") as fh:  # one bit of the last tensor flipped
        fh.seek(-1, 2)
        last = fh.read(1)[0]
        fh.seek(-1, 2)
        fh.write(bytes([last ^ 1]))
    assert OwnFileAnswers(Artifact(path=other, backend="gguf", quant="f16", files=(other,)), target, cache).path != again.path
    assert OwnFileAnswers(own, target.with_overrides(threads=target.resolved_threads() + 1), cache).path != again.path
    again.path.write_text("{not json", encoding="utf-8")
    broken = OwnFileAnswers(own, target, cache)
    assert broken.generate(ids, 6).tokens == answer and broken.misses == 1
    broken.close()
    assert json.loads(again.path.read_text(encoding="utf-8"))["answers"]  # written whole again


def test_an_answer_is_scored_up_to_and_with_its_end_of_turn(tiny_llama_dir):
    """What a chat app shows stops at the first end-of-turn, and stopping is part of the answer: the
    ids after it are not scored, the end-of-turn itself is."""
    source = SourceRunner(tiny_llama_dir)
    stop = min(source.stop_ids())
    assert source.until_stop([5, 6, stop, 7, 8]) == [5, 6, stop]
    assert source.until_stop([5, 6]) == [5, 6]
    prompt = source.own_chat_ids("Hello there")
    total, n = source.answer_nll(prompt, [5, 6, stop])
    assert n == 3 and total > 0
    assert source.answer_nll(prompt, []) == (0.0, 0)


def test_where_answers_part_the_source_s_own_odds_of_both_tokens_are_read(tiny_llama_dir):
    """The default model answers the France prompt with "The" at 15 % against "L" at 14 %: a shipped file
    that says "L..." took the source's own near-tie. Where the answers part, both tokens' probabilities
    are the source's after the same prefix, so the report can tell the source's doubt from damage."""
    import numpy as np

    from edgeft.bench.source_model import NEAR_TIE, side_by_side

    source = SourceRunner(tiny_llama_dir)
    prompt = "Hello there"
    logits = source.logits(source.own_chat_ids(prompt))[-1]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    first, second = (int(i) for i in np.argsort(-probs)[:2])
    [row] = side_by_side(source, _Says(answer=[second] * 6), (prompt,), new_tokens=6)
    assert row["parts_at"] == 0 and not row["same"]
    assert row["source_token"] == source.tokenizer.decode([first])
    assert row["artifact_token"] == source.tokenizer.decode([second])
    assert row["source_p_own"] == pytest.approx(probs[first], rel=1e-4)
    assert row["source_p_artifact"] == pytest.approx(probs[second], rel=1e-4)
    assert row["near_tie"] == (probs[second] >= NEAR_TIE * probs[first])
    [same] = side_by_side(source, _Says(source=source), (prompt,), new_tokens=6)
    assert same["same"] and "parts_at" not in same
    assert row["chat_template"] is True  # this tiny model has one; a base model's answers are labelled otherwise


def test_a_parting_is_a_near_tie_only_when_the_source_nearly_chose_the_shipped_token():
    import numpy as np

    from edgeft.bench.report import answers_block
    from edgeft.bench.source_model import parting

    class _Tok:
        def decode(self, ids):
            return {2: " Paris", 5: " L", 7: " Lyon"}.get(ids[0], "?")

    class _Source:
        tokenizer = _Tok()

    own = np.log([0.9, 0.30, 0.5])
    tie = parting(_Source(), [1, 2, 3], [1, 5, 6], own, np.log([0.9, 0.16, 0.1]))
    assert tie["parts_at"] == 1 and tie["near_tie"]
    assert tie["source_p_own"] == pytest.approx(0.30) and tie["source_p_artifact"] == pytest.approx(0.16)
    damage = parting(_Source(), [1, 2, 3], [1, 7, 6], own, np.log([0.9, 0.004, 0.1]))
    assert not damage["near_tie"] and damage["artifact_token"] == " Lyon"
    assert parting(_Source(), [1, 2], [1, 2], own[:2], own[:2]) == {}

    rows = [dict(prompt="Capital?", source="Paris", artifact="L'Etoile", same=False, ppl_vs_source_pct=57.0, **tie),
            dict(prompt="City?", source="Paris", artifact="Lyon", same=False, ppl_vs_source_pct=300.0, **damage)]
    text = answers_block({"answers": rows, "metrics": {"answer_ppl_vs_source_pct": 300.0, "answers_same": 0,
                                                        "answer_ppl_vs_source_mean_pct": 178.5, "answers_total": 2}})
    assert "parts at token 2: the source gives its ' Paris' 30 %, the shipped file's ' L' 16 %: a near-tie" in text
    assert "the shipped file's ' Lyon' 0.4 %\n" in text + "\n" and text.count("near-tie") == 1  # the tie row only
    assert "1 part where the source itself is near a tie" in text


def test_answers_of_a_model_without_a_chat_template_are_not_called_chat_answers():
    """The embedded Gemma 3 270M is a base model: its prompts go in bare and it continues the text. The
    report said "chat template" all the same."""
    from edgeft.bench.report import answers_block

    row = {"prompt": "How many days are there in a week?", "source": "How many days are there in a month?",
           "artifact": "How many days are there in a month?", "same": True, "ppl_vs_source_pct": 0.0}
    assert "greedy, chat template" in answers_block({"answers": [{**row, "chat_template": True}], "metrics": {}})
    bare = answers_block({"answers": [{**row, "chat_template": False}], "metrics": {}})
    assert "bare prompts: the model has no chat template" in bare and "chat template)" not in bare


def test_a_failed_answer_line_says_where_the_users_own_file_fails_it_too():
    from edgeft.cli import _own_file_note

    rows = [{"prompt": "What is the capital of France?", "ppl_vs_source_pct": 57.0, "source_file_ppl_vs_source_pct": 75.0},
            {"prompt": "How many days are there in a week?", "ppl_vs_source_pct": 93.0, "source_file_ppl_vs_source_pct": 0.0},
            {"prompt": "Hi", "ppl_vs_source_pct": 10.0, "source_file_ppl_vs_source_pct": 80.0}]
    bench = {"budget": [{"budget": "answer_ppl_vs_source_pct", "limit": 50.0, "value": 93.0, "status": "FAIL"}], "answers": rows}
    note = _own_file_note(bench)
    assert note.startswith("answers: on 1 of the 2 prompts past the 50 % line") and "France?\" +75 %" in note
    assert "week" not in note and "Hi" not in note  # past the line alone, or the own file alone, is not named
    rows[0]["source_file_ppl_vs_source_pct"] = 20.0
    assert _own_file_note(bench) is None
    assert _own_file_note({"budget": bench["budget"], "answers": [{"prompt": "x", "ppl_vs_source_pct": 90.0}]}) is None
