"""`edgeft compare` and `edgeft build --quant auto` on a tiny model: one conversion, the same
tokens for every level, the table/JSON/Markdown/PNG outputs, and what auto tried and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from tiny_models import tiny_profile


def _profile(tmp_path, budget: str):
    return tiny_profile(tmp_path, quant="q4_0", runs=2, bench_extra="eval_window = 64\neval_tokens = 512\n", budget=budget)


@pytest.fixture(scope="module")
def compared(tiny_llama_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    out = tmp / "out"
    profile = _profile(tmp, "package_mb = 350\nppl_increase_pct = 1000")
    result = CliRunner().invoke(main, ["--quiet", "compare", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--quant", "f16,q8_0,q4_0", "--out", str(out)])
    return out, result


def test_compare_writes_table_json_markdown_and_plot(compared):
    out, result = compared
    assert result.exit_code == 0, result.output
    for name in ("compare.json", "compare.md", "compare.png"):
        assert (out / name).is_file(), name
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.partial"))
    data = json.loads((out / "compare.json").read_text())
    assert [r["quant"] for r in data["rows"]] == ["f16", "q8_0", "q4_0"]
    assert "recommended: gguf q4_0" in result.output and "<- recommended" in (out / "compare.md").read_text()
    assert "q4_0*" in result.output and "* rounded with an importance matrix" in result.output
    assert data["recommended"]["quant"] == "q4_0"


def test_compare_uses_one_conversion_one_reference_and_the_same_tokens(compared):
    out, _ = compared
    data = json.loads((out / "compare.json").read_text())
    assert data["same_eval_tokens"] and len({r["eval"]["sha256"] for r in data["rows"]}) == 1
    assert data["reference"] == str(out / "work" / "model-f16.gguf")
    assert sorted(p.name for p in (out / "work").glob("*.gguf")) == ["model-f16.gguf"]
    f16 = next(r for r in data["rows"] if r["quant"] == "f16")
    assert f16["metrics"]["kl_mean"] == 0 and f16["metrics"]["top1_agree_pct"] == 100
    sizes = {r["quant"]: r["metrics"]["package_mb"] for r in data["rows"]}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    for r in data["rows"]:
        assert r["metrics"]["ttft_ms_p90"] >= r["metrics"]["ttft_ms_p50"] > 0
    # the levels a build would weigh by the shipped prompts' importance matrix are weighed here too
    weighed = {r["quant"]: r["importance"] for r in data["rows"]}
    assert weighed["f16"] is None and weighed["q8_0"] is None and "shipped prompt set" in weighed["q4_0"]["text"]


def test_compare_names_the_budget_no_level_meets(tiny_llama_dir, compared, tmp_path):
    out, _ = compared
    profile = _profile(tmp_path, "package_mb = 0.0001")
    result = CliRunner().invoke(main, ["--quiet", "compare", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--quant", "q4_0", "--out", str(out), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output[result.output.index("{\n") : result.output.rindex("}") + 1])
    assert data["recommended"] is None and "package_mb fails at every level" in data["verdict"]


def test_compare_rejects_unknown_levels(tmp_path):
    result = CliRunner().invoke(main, ["--quiet", "compare", "--quant", "q4_0,q9_9,auto", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "q9_9" in result.output and "auto" in result.output
    assert not (tmp_path / "o").exists()


def test_quant_auto_keeps_the_smallest_level_that_passes(tiny_llama_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    from edgeft.backends import registry

    # listed out of size order on purpose: auto must order by the files it made
    monkeypatch.setitem(registry._REGISTRY, "gguf", replace(registry.info("gguf"), auto_levels=("q8_0", "f16", "q4_0")))
    out = tmp_path / "out"
    profile = _profile(tmp_path, "package_mb = 350")
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--quant", "auto", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    auto = manifest["stages"]["auto_quant"]
    assert [t["quant"] for t in auto["tried"]] == ["q4_0"] and auto["kept"] == "model-q4_0.gguf"
    assert manifest["target"]["quant"] == "q4_0"
    assert sorted(p.name for p in out.glob("model-*.gguf")) == ["model-q4_0.gguf"]
    assert json.loads((out / "bench.json").read_text())["metrics"]["ppl_increase_pct"] is not None


def test_quant_auto_with_student_auto_measures_candidates_at_the_smallest_level(tiny_llama_dir, tmp_path, monkeypatch):
    """`build --quant auto` without --no-distill: `--student auto` cannot measure at "auto", so a candidate
    fits when it fits at the level of fewest bits (it crashed with an internal KeyError before)."""
    from dataclasses import replace

    from edgeft.backends import registry

    monkeypatch.setitem(registry._REGISTRY, "gguf", replace(registry.info("gguf"), auto_levels=("q8_0", "q4_0")))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--quiet", "build", "--model", str(tiny_llama_dir), "--target",
                                       str(_profile(tmp_path, "package_mb = 350")), "--quant", "auto", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["student"]["measured_at"] == "q4_0" and stages["student"]["level_free"] and not stages["student"]["pruned"]
    assert "measured at q4_0" in stages["student"]["reason"]
    assert stages["auto_quant"]["kept"] == "model-q4_0.gguf"


def test_quant_auto_records_why_each_level_was_rejected(tiny_llama_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    from edgeft.backends import registry

    monkeypatch.setitem(registry._REGISTRY, "gguf", replace(registry.info("gguf"), auto_levels=("q8_0", "q4_0")))
    out = tmp_path / "out"
    profile = _profile(tmp_path, "package_mb = 0.0001")
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--quant", "auto", "--out", str(out)])
    assert result.exit_code == 1, result.output
    auto = json.loads((out / "manifest.json").read_text())["stages"]["auto_quant"]
    assert [t["quant"] for t in auto["tried"]] == ["q4_0", "q8_0"]
    for tried in auto["tried"]:
        assert tried["pass"] is False and tried["rejected_because"][0].startswith("package_mb = ")
    assert "no level met every budget" in auto["verdict"]


def test_quant_auto_needs_the_bench(tiny_llama_dir, tmp_path):
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(_profile(tmp_path, "")),
                                       "--quant", "auto", "--no-bench", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--no-bench" in result.output
    assert not (tmp_path / "o").exists()


def test_compare_across_backends_in_one_table(tiny_llama_dir, tmp_path):
    """GGUF and ONNX builds of one model in the same schema, the same table and the same plot."""
    import json as _json

    gguf = tmp_path / "g.toml"
    gguf.write_text('backend = "gguf"\nquant = "q8_0"\nthreads = 1\n[bench]\nprompt_tokens = 16\nnew_tokens = 8\nruns = 2\ncontext = 256\n'
                    "[budget]\npackage_mb = 350\n")
    onnx = tmp_path / "o.toml"
    onnx.write_text(gguf.read_text().replace('backend = "gguf"', 'backend = "onnx"').replace('quant = "q8_0"', 'quant = "int4"'))
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["--quiet", "compare", "--model", str(tiny_llama_dir), "--targets", f"{gguf},{onnx}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = _json.loads((out / "compare.json").read_text())
    rows = data["rows"]
    backends = {r["backend"] for r in rows}
    assert backends == {"gguf", "onnx"}
    for r in rows:
        assert r["metrics"]["ppl"] > 0 and r["metrics"]["ttft_ms_p90"] > 0
    assert (out / "compare.png").stat().st_size > 0


def test_several_models_in_one_table_each_against_its_own_source(tiny_model_dirs, tmp_path):
    """`--models a,b`: one table and plot, a model column, each model's levels in its own folder and
    scored against its own source, and a recommendation that names the model."""
    llama, gemma = tiny_model_dirs["LlamaForCausalLM"], tiny_model_dirs["Gemma3ForCausalLM"]
    profile = _profile(tmp_path, "package_mb = 350")
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["--quiet", "compare", "--models", f"{llama},{gemma}", "--target", str(profile),
                                       "--quant", "q8_0,q4_0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert data["models"] == [str(llama), str(gemma)]
    assert [(r["model"], r["quant"]) for r in data["rows"]] == [(str(m), q) for m in (llama, gemma) for q in ("q8_0", "q4_0")]
    for r in data["rows"]:
        assert str(out / llama.name) in r["artifact"] or str(out / gemma.name) in r["artifact"]
        assert r["eval"]["source_model"].startswith(r["model"])  # its own source, not the other model
        assert r["metrics"]["kl_vs_source_mean"] >= 0
    assert data["same_eval_tokens"]  # within each model
    assert data["recommended"]["model"] in data["models"] and data["recommended"]["model"] in data["verdict"]
    header = (out / "compare.md").read_text().splitlines()[4]
    assert header.startswith("| model | backend | level")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(main, ["--quiet", "compare", "--model", str(llama), "--models", f"{llama},{gemma}", "--out", str(out)])
    assert r.exit_code == 2 and "--models" in r.output


def _level(quant: str, size: float, ppl: float | None, size_limit: float, ppl_limit: float = 10.0):
    from edgeft.backends.base import Artifact
    from edgeft.sweep import Level

    lines = [{"budget": "package_mb", "value": size, "limit": size_limit, "status": "PASS" if size <= size_limit else "FAIL"},
             {"budget": "ppl_vs_source_pct", "value": ppl, "limit": ppl_limit,
              "status": "NOT MEASURED" if ppl is None else "PASS" if ppl <= ppl_limit else "FAIL"}]
    art = Artifact(path=Path(f"model-{quant}.gguf"), backend="gguf", quant=quant)
    return Level(artifact=art, reference=art, result={"pass": all(b["status"] != "FAIL" for b in lines), "budget": lines,
                                                      "metrics": {"package_mb": size, "ppl_vs_source_pct": ppl}})


def test_quant_auto_keeps_the_closest_level_that_fits_when_none_passes():
    """A file over the size line is no answer: with every level failing, the one that fits and misses
    the quality line by least is shipped, not the largest (which here does not fit)."""
    from edgeft.sweep import keep_level

    tried = [_level("q2_k", 70, 80.0, 85), _level("q4_0", 78, 22.0, 85), _level("q4_k_m", 84, 30.0, 85), _level("f16", 270, 0.1, 85)]
    kept, verdict = keep_level(tried)
    assert kept.artifact.quant == "q4_0" and "closest to the source" in verdict
    kept, verdict = keep_level([_level("q4_0", 78, 22.0, 50), _level("f16", 270, 0.1, 50)])
    assert kept.artifact.quant == "f16" and "kept the largest" in verdict
    kept, verdict = keep_level([_level("q4_0", 78, 22.0, 85), _level("q8_0", 80, 5.0, 85), _level("f16", 270, 0.1, 85)])
    assert kept.artifact.quant == "q8_0" and verdict == "met every budget"


def test_the_table_says_when_a_level_was_timed_again():
    from edgeft.bench.compare import table_rows

    def row(quant: str, runs: int, ok: bool) -> dict:
        return {"model": "m", "backend": "gguf", "quant": quant, "artifact": quant, "pass": ok, "latency_runs": runs,
                "metrics": {"ttft_ms_p90": 150.0 if ok else 250.0},
                "budget": [{"budget": "ttft_ms_p90", "value": 150.0 if ok else 250.0, "limit": 200.0,
                            "status": "PASS" if ok else "FAIL"}]}

    header, rows = table_rows({"rows": [row("q8_0", 1, True), row("q4_0", 3, False)], "recommended": None})
    spread = header.index("spread")
    assert rows[0][spread] == "0%" and rows[1][spread] == "0%, best of 3"
    assert rows[1][-1] == "FAIL ttft_ms_p90 250 > 200"  # the value that failed, not only the line's name


def test_without_quant_one_target_compares_every_level_auto_weighs_and_several_their_own():
    from edgeft.backends.registry import info
    from edgeft.bench.compare import parse_levels
    from edgeft.config import load_target

    small = load_target("gguf-small")  # q4_k_s: not among the levels auto weighs, so added in its place by size
    levels = parse_levels(None, [small])["gguf-small"]
    assert set(levels) == {*info("gguf").auto_levels, "q4_k_s"}
    bits = info("gguf").bits_per_weight
    assert [bits[q] for q in levels] == sorted(bits[q] for q in levels)
    assert parse_levels(None, [load_target("gguf"), load_target("onnx")]) == {"gguf": ["q8_0"], "onnx": [load_target("onnx").quant]}


def test_the_table_shows_quality_against_the_source_and_labels_quantization_loss_alone():
    """The budget judges each level against the model you gave; the table once showed only the loss
    against the level's own f16 export, under a bare "ppl +%", which never showed why q4_k_m failed."""
    from edgeft.bench.compare import COLUMN_NOTE, markdown, table_rows

    metrics = {"package_mb": 105.5, "ttft_ms_p90": 150.0, "ms_per_token_p90": 7.5, "peak_rss_mb": 240.0,
               "ppl_vs_source_pct": 12.34, "kl_vs_source_mean": 0.0612, "top1_vs_source_pct": 85.8,
               "answer_ppl_vs_source_pct": 43.3, "ppl_increase_pct": 4.3}
    row = {"model": "m", "backend": "gguf", "quant": "q4_k_m", "artifact": "a", "pass": False, "latency_runs": 1,
           "metrics": metrics, "machine": {"cpu": "x", "threads": 2},
           "budget": [{"budget": "answer_ppl_vs_source_pct", "value": 43.3, "limit": 30.0, "status": "FAIL"}]}
    header, [cells] = table_rows({"rows": [row], "recommended": None})
    shown = dict(zip(header, cells))
    assert shown["ppl vs src"] == "+12.3%" and shown["KL vs src"] == "0.061" and shown["top-1 vs src"] == "85.8%"
    assert shown["worst answer"] == "+43%" and shown["quant. alone"] == "+4.3%"
    assert header.index("ppl vs src") < header.index("quant. alone")
    assert shown["budget"] == "FAIL answer_ppl_vs_source_pct 43.3 > 30"
    md = markdown({"model": "m", "rows": [row], "references": {"gguf": "f16.gguf"}, "verdict": "none", "recommended": None})
    assert COLUMN_NOTE in md and "f16.gguf" in md


def test_compare_from_a_gguf_model_reads_every_level_against_its_own_file(tiny_gguf, tmp_path, monkeypatch):
    """A GGUF source (the embedded models are): every level's answers sit beside what the model's own
    file answers in llama.cpp, said under the table; the file answers once, later levels read the cache."""
    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compare", "--model", str(tiny_gguf), "--target", str(_profile(tmp_path, "package_mb = 350")),
                                       "--quant", "q8_0,q4_0", "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["source_file"] for r in rows] == [str(tiny_gguf)] * 2
    assert all(0 <= r["metrics"]["answers_no_worse_than_source_file"] <= r["metrics"]["answers_total"] for r in rows)
    answered = [json.loads(Path(r["bench_json"]).read_text())["eval"]["source_file_answers"] for r in rows]
    assert answered[0]["generated"] > 0 and answered[1] == {**answered[1], "cached": answered[0]["generated"], "generated": 0}
    line = "the source's own file (tiny-f16.gguf) through the gguf runtime: worst answer"
    assert line in result.output and line in (out / "compare.md").read_text()


def test_the_footnote_says_which_targets_levels_gptq_rounded_again():
    from edgeft.bench.compare import importance_footnote

    weighed = {"tokens": 8192, "text": "the prompts of the shipped prompt set"}
    rows = [{"target": "gguf-small", "importance": {**weighed, "second_moments": True}},
            {"target": "gguf", "importance": {**weighed, "second_moments": False}}, {"target": "onnx", "importance": None}]
    line = importance_footnote({"rows": rows})
    assert line.startswith("* rounded with an importance matrix") and "gguf-small's then rounded again by GPTQ" in line
    assert "GPTQ" not in importance_footnote({"rows": rows[1:]})
