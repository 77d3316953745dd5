"""`--student auto`: candidates measured for size/latency without training, the largest that fits distilled."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from edgeft.student_auto import StudentSearch, busy_warning, choose, layer_counts, settle_timing
from tiny_models import tiny_llama, tiny_profile, write_jsonl


def _fake_measure(sizes: dict[int, float], limit: float, calls: list[int]):
    def measure(layers: int) -> dict:
        calls.append(layers)
        status = "PASS" if sizes[layers] <= limit else "FAIL"
        return {"package_mb": sizes[layers], "budget": [
            {"budget": "package_mb", "value": sizes[layers], "limit": limit, "status": status},
            {"budget": "ppl_vs_source_pct", "value": None, "limit": 1.0, "status": "NOT MEASURED"}]}
    return measure


def test_layer_counts_are_the_source_then_smaller_prunings():
    assert layer_counts(30) == [30, 27, 24, 21, 18, 15, 12, 9, 6]
    assert layer_counts(4) == [4, 3, 2, 1]
    assert layer_counts(2, StudentSearch(fractions=(0.5,))) == [2, 1]


def test_the_largest_candidate_that_fits_is_chosen_and_smaller_ones_are_not_measured():
    sizes = {4: 40.0, 3: 30.0, 2: 20.0, 1: 10.0}
    calls: list[int] = []
    got = choose(4, _fake_measure(sizes, 25.0, calls))
    assert got["layers"] == 2 and got["pruned"] and got["fits"]
    assert calls == [4, 3, 2]
    assert got["candidates"][-1] == {"layers": 1, "measured": False}
    assert "package_mb 30 > 25" in got["reason"]


def test_a_source_that_fits_is_not_pruned():
    calls: list[int] = []
    got = choose(4, _fake_measure({4: 40.0}, 100.0, calls))
    assert calls == [4] and not got["pruned"] and got["layers"] == 4
    assert "nothing is pruned" in got["reason"]


def test_when_nothing_fits_the_smallest_is_kept_and_said_to_fail():
    got = choose(4, _fake_measure({4: 40.0, 3: 30.0, 2: 20.0, 1: 10.0}, 5.0, []))
    assert got["layers"] == 1 and not got["fits"]
    assert "no candidate meets" in got["reason"]


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    """A 4-layer tiny Llama: candidates 4, 3, 2 and 1 layers."""
    return tiny_llama(tmp_path_factory.mktemp("tiny4"), layers=4)


def _build(model, profile, out, *extra):
    return CliRunner().invoke(main, ["build", "--model", str(model), "--target", str(profile), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def candidate_sizes(tiny4, tmp_path_factory):
    """Every candidate's package size, from a search that nothing passes (so every one is measured)."""
    tmp = tmp_path_factory.mktemp("sizes")
    profile = tiny_profile(tmp, runs=1, budget="package_mb = 0.000001")
    result = _build(tiny4, profile, tmp / "out", "--no-bench")
    search = json.loads((tmp / "out" / "work" / "student-auto" / "search.json").read_text())
    assert not search["fits"] and result.exit_code == 0, result.output
    return {c["layers"]: c["package_mb"] for c in search["candidates"]}


def test_auto_distills_the_largest_candidate_under_a_size_budget(tiny4, candidate_sizes, tmp_path):
    assert list(candidate_sizes) == [4, 3, 2, 1] and candidate_sizes[3] > candidate_sizes[2]
    limit = (candidate_sizes[3] + candidate_sizes[2]) / 2
    profile = tiny_profile(tmp_path, runs=1, budget=f"package_mb = {limit}")
    out = tmp_path / "out"
    result = _build(tiny4, profile, out)
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["student"]["mode"] == "distill" and stages["student"]["layers"] == 2
    assert [c["layers"] for c in stages["student"]["candidates"] if c.get("measured", True)] == [4, 3, 2]
    assert json.loads((out / "work" / "merged" / "config.json").read_text())["num_hidden_layers"] == 2
    assert "distill" in stages and "data" in stages
    assert "<- chosen" in result.output and "largest student" in result.output
    assert not (out / "work" / "student-auto" / "layers-3").exists()  # candidates' files are not kept


def test_an_interrupted_search_leaves_no_candidate_files_and_a_new_build_drops_old_ones(tiny4, tmp_path, monkeypatch):
    """A pruned candidate is a model and its GGUF files (about 800 MB for the default model): Ctrl-C
    during its measurement removes them, and a build in a folder that a killed build left removes
    the ones that outlived it."""
    import edgeft.bench.run as run_mod

    out = tmp_path / "out"
    leftover = out / "work" / "student-auto" / "layers-2" / "hf"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"x" * 64)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "bench", interrupted)
    result = _build(tiny4, tiny_profile(tmp_path, runs=1, budget="package_mb = 0.000001"), out, "--no-bench")
    assert result.exit_code != 0
    assert "student auto: measuring 4 of 4 layers" in result.output  # it was inside a measurement
    assert not list((out / "work" / "student-auto").glob("layers-*"))


def test_a_source_that_fits_with_targetless_data_is_compiled_without_training(tiny4, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"input": f"Question number {i}?"} for i in range(20)])
    profile = tiny_profile(tmp_path, runs=1, budget="package_mb = 350")
    out = tmp_path / "out"
    result = _build(tiny4, profile, out, "--data", str(data))
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["student"]["mode"] == "compile" and not stages["student"]["pruned"]
    assert "data" not in stages and "distill" not in stages  # nothing to learn: not even the teacher ran
    assert "nothing to learn" in result.output


@pytest.mark.parametrize("nf4", [False, True], ids=["fp32-base", "nf4-base"])
def test_a_source_that_fits_with_human_targets_is_fine_tuned(tiny4, tmp_path, nf4):
    import random

    rng = random.Random(0)
    words = "river mountain copper violin lantern orbit meadow glacier harbor saffron tunnel quartz falcon ember".split()
    rows = []
    for _ in range(40):
        a, b, c = rng.sample(words, 3)
        rows.append({"input": f"Describe the {a} near the {b}.", "target": f"The {a} rests beside a {c}."})
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    profile = tiny_profile(tmp_path, runs=1, budget="package_mb = 350")
    out = tmp_path / "out"
    result = _build(tiny4, profile, out, "--data", str(data), *(["--nf4-base"] if nf4 else []))
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["student"]["mode"] == "fine-tune" and stages["student"]["human_targets"] == 40
    assert json.loads((out / "work" / "merged" / "config.json").read_text())["num_hidden_layers"] == 4
    assert stages["distill"]["config"]["alpha"] == 0.0
    # the LoRA trains on the weights the shipped file is made from, unless QLoRA is asked for
    assert stages["distill"]["config"]["quantize_base"] is nf4
    meta = json.loads((out / "work" / "distill" / "adapter" / "edgeft_adapter.json").read_text())
    assert meta["quantized_base"] is nf4
    assert ("QLoRA (NF4 base)" if nf4 else "LoRA (fp32 base)") in stages["student"]["reason"]


def _bench(ttft: float, size: float, ttft_limit: float = 200.0, size_limit: float = 85.0) -> dict:
    metrics = {"ttft_ms_p90": ttft, "package_mb": size, "ms_per_token_p90": 10.0}
    return {"metrics": metrics, "budget": [
        {"budget": "ttft_ms_p90", "value": ttft, "limit": ttft_limit, "status": "PASS" if ttft <= ttft_limit else "FAIL"},
        {"budget": "package_mb", "value": size, "limit": size_limit, "status": "PASS" if size <= size_limit else "FAIL"},
        {"budget": "ppl_vs_source_pct", "value": None, "limit": 50.0, "status": "NOT MEASURED"}]}


def test_a_candidate_failing_only_on_time_is_benched_again_and_keeps_its_quietest_time():
    """A busy machine must not prune a model that fits: the second bench, on a quiet machine, passes."""
    later = iter([_bench(150.0, 80.0)])
    got = settle_timing(_bench(680.0, 80.0), lambda: next(later), tries=3)
    assert got["tries"] == 2 and got["metrics"]["ttft_ms_p90"] == 150.0
    assert [b["status"] for b in got["budget"]] == ["PASS", "PASS", "NOT MEASURED"]


def test_a_candidate_that_is_slow_every_time_still_fails_after_its_tries():
    later = iter([_bench(260.0, 80.0), _bench(240.0, 80.0)])
    got = settle_timing(_bench(250.0, 80.0), lambda: next(later), tries=3)
    assert got["tries"] == 3 and got["metrics"]["ttft_ms_p90"] == 240.0 and got["budget"][0]["status"] == "FAIL"


def test_a_candidate_too_large_is_not_benched_again():
    def again():
        raise AssertionError("a size failure cannot be load: no second bench")
    got = settle_timing(_bench(680.0, 90.0), again, tries=3)
    assert got["tries"] == 1 and got["budget"][1]["status"] == "FAIL"


def test_a_pruning_decided_while_the_machine_stayed_busy_is_said_to_be_doubtful():
    busy = {**_bench(680.0, 80.0), "others_cores": 1.9}
    later = iter([{**_bench(650.0, 80.0), "others_cores": 1.7}, {**_bench(700.0, 80.0), "others_cores": 1.8}])
    row = settle_timing(busy, lambda: next(later), tries=3)
    assert row["others_cores"] == 1.7
    row = {"layers": 30, **row, "fits": False}
    assert "1.7 cores busy while 30 layers" in busy_warning([row])
    quiet_but_slow = {**row, "others_cores": 0.1}
    assert busy_warning([quiet_but_slow]) is None
    too_large = {"layers": 30, **_bench(150.0, 90.0), "fits": False, "others_cores": 1.9}
    assert busy_warning([too_large]) is None


def test_a_failing_distilled_build_pruned_on_a_busy_machine_says_to_build_again_first(capsys):
    from types import SimpleNamespace

    from edgeft.cli import _print_levers

    bench = {"budget": [{"budget": "ppl_vs_source_pct", "value": 900.0, "limit": 50.0, "status": "FAIL"}],
             "artifact": {"backend": "gguf", "quant": "q4_k_m"}}
    student = {"mode": "distill", "pruned": True, "level_free": False}
    _print_levers(SimpleNamespace(bench=bench, student=student))
    quiet = capsys.readouterr().out
    _print_levers(SimpleNamespace(bench=bench, student={**student, "busy_warning": "other processes kept 1.7 cores busy"}))
    busy = capsys.readouterr().out
    assert "quiet machine" not in quiet and "Levers:" in quiet
    assert "build again on a quiet machine" in busy and "Levers:" in busy


def test_between_the_coarse_step_that_fits_and_the_one_above_the_largest_count_that_fits_is_found():
    sizes = {n: 10.0 * n for n in range(1, 11)}
    calls: list[int] = []
    got = choose(10, _fake_measure(sizes, 75.0, calls), StudentSearch(fractions=(1.0, 0.5)))
    assert calls == [10, 5, 8, 7] and got["layers"] == 7 and got["fits"]
    assert [c["layers"] for c in got["candidates"]] == [10, 8, 7, 5]  # largest first in the table
    assert "(8 layers fails package_mb 80 > 75)" in got["reason"]
    calls.clear()
    assert choose(10, _fake_measure(sizes, 75.0, calls), StudentSearch(fractions=(1.0, 0.5), refine=False))["layers"] == 5
    assert calls == [10, 5]


def test_a_model_whose_layer_kinds_repeat_is_pruned_by_whole_periods(tmp_path):
    """Gemma 3 270M (18 layers, every 6th global) was pruned to 16 layers, which llama.cpp's Gemma 3 cannot
    hold: the build died after 9 minutes. Candidates and the halving now move by whole periods, and a
    forced count that breaks the pattern is refused before any stage runs."""
    import tiny_models

    assert layer_counts(18, period=6) == [18, 12, 6]
    sizes = {n: 10.0 * n for n in range(1, 19)}
    calls: list[int] = []
    got = choose(18, _fake_measure(sizes, 170.0, calls), StudentSearch(fractions=(1.0, 0.5)), period=6)
    assert calls == [18, 12] and got["layers"] == 12  # nothing between 12 and 18 keeps the pattern
    calls.clear()
    got = choose(24, _fake_measure({n: 10.0 * n for n in range(1, 25)}, 190.0, calls), StudentSearch(fractions=(1.0, 0.25)),
                 period=6)
    assert calls == [24, 6, 18] and got["layers"] == 18

    gemma = tiny_models.tiny_gemma3(tmp_path / "gemma", layers=12, sliding_window=8)
    result = _build(gemma, tiny_profile(tmp_path, runs=1, budget="package_mb = 350"), tmp_path / "out", "--student-layers", "8")
    assert result.exit_code == 2, result.output
    assert "--student-layers" in result.output and "repeats every 6 layers" in result.output and "12, 6" in result.output
    assert not (tmp_path / "out" / "work" / "data").exists()  # refused before the data stage

    # The search itself, end to end: every candidate compiles to GGUF (the converter holds Gemma 3 to its
    # pattern) and the smallest, which fits nothing here, is distilled, merged and compiled.
    out = tmp_path / "searched"
    result = _build(gemma, tiny_profile(tmp_path, runs=1, budget="package_mb = 0.000001"), out, "--no-bench")
    assert result.exit_code == 0, result.output
    student = json.loads((out / "manifest.json").read_text())["stages"]["student"]
    assert [c["layers"] for c in student["candidates"]] == [12, 6] and student["layers"] == 6
    merged = json.loads((out / "work" / "merged" / "config.json").read_text())
    assert merged["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]


def test_a_search_timed_on_a_busy_machine_is_not_reused(tiny4, tmp_path, monkeypatch):
    """Its warning says to build again on a quiet machine: the next build must measure again, not
    read back the pruning that load caused."""
    from edgeft import student_auto

    profile = tiny_profile(tmp_path, runs=1, budget="package_mb = 350")
    out = tmp_path / "out"
    monkeypatch.setattr(student_auto, "busy_warning", lambda candidates: "other processes kept 1.9 cores busy")
    assert _build(tiny4, profile, out, "--no-bench").exit_code == 0
    search = json.loads((out / "work" / "student-auto" / "search.json").read_text())
    assert search["busy_warning"] and not search.get("reused")
    monkeypatch.setattr(student_auto, "busy_warning", lambda candidates: None)
    result = _build(tiny4, profile, out, "--no-bench")
    assert result.exit_code == 0, result.output
    search = json.loads((out / "manifest.json").read_text())["stages"]["student"]
    assert not search.get("reused") and "busy_warning" not in search
    result = _build(tiny4, profile, out, "--no-bench")  # a quiet search is reused as before
    assert json.loads((out / "manifest.json").read_text())["stages"]["student"]["reused"]


def test_a_build_whose_final_timing_failed_on_a_busy_machine_says_to_measure_again(capsys, tmp_path):
    from types import SimpleNamespace

    from edgeft.cli import _print_levers

    bench = {"budget": [{"budget": "ttft_ms_p90", "value": 224.0, "limit": 200.0, "status": "FAIL"}],
             "artifact": {"backend": "gguf", "quant": "q4_k_s"},
             "latency_tries": [{"ttft_ms_p90": 224.0, "others_cores": 0.9, "kept": True},
                               {"ttft_ms_p90": 230.0, "others_cores": 1.2, "kept": False}]}
    built = SimpleNamespace(bench=bench, student={"mode": "source"}, artifact=tmp_path / "m.gguf", out_dir=tmp_path)
    _print_levers(built)
    busy = capsys.readouterr().out
    assert "timing: FAIL (ttft_ms_p90) on each of 2 runs" in busy and "at least 0.9 cores" in busy
    assert f"`edgeft bench {tmp_path}`" in busy  # the build folder: its file, profile, source and reference
    bench["latency_tries"][0]["others_cores"] = 0.1  # one quiet run: the model's own time
    _print_levers(built)
    assert capsys.readouterr().out == ""
