"""Task adapters on one base (issue 18): `build --task NAME=FILE` trains one LoRA per task on the shared
base, ships each in the backend's adapter format beside it, and benches every adapter on that base,
with the proof that the runtime applies it (the merged weights' logits with it, other ones without)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeft.cli import main
from edgeft.tasks import examples
from tiny_models import tiny_profile, write_jsonl


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("task-data")
    return {"intent": write_jsonl(tmp / "intent.jsonl", examples.task_rows("intent", 60)),
            "extract": write_jsonl(tmp / "extract.jsonl", examples.task_rows("extract", 60))}


@pytest.fixture(scope="module")
def task_build(tiny_llama_dir, task_files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("task-build")
    profile = tiny_profile(tmp, context=256)
    out = tmp / "out"
    result = CliRunner().invoke(main, ["build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--out", str(out), "--task", f"intent={task_files['intent']}",
                                       "--task", f"extract={task_files['extract']}", "--task-modules", "extract=attention"])
    return out, result


def test_every_task_ships_an_adapter_listed_in_the_manifest(task_build, task_files):
    from edgeft.manifest import sha256

    out, result = task_build
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    outputs = {o["path"]: o for o in manifest["outputs"]}
    entries = {e["task"]: e for e in manifest["stages"]["tasks"]["adapters"]}
    assert set(entries) == {"intent", "extract"}
    for task, entry in entries.items():
        path = out / "adapters" / f"{task}.gguf"
        assert outputs[f"adapters/{task}.gguf"]["sha256"] == sha256(path)
        assert outputs[f"adapters/{task}.gguf"]["bytes"] == path.stat().st_size > 0
        assert entry["data_sha256"] == sha256(task_files[task])
    assert entries["extract"]["modules"] == "attention" and entries["intent"]["modules"] == "all"
    # attention only is fewer matrices than every linear layer
    assert (out / "adapters" / "extract.gguf").stat().st_size < (out / "adapters" / "intent.gguf").stat().st_size


def test_gguf_adapters_ship_at_f16_and_still_pass_the_proof(task_build):
    """Half the bytes of f32 per adapter; the proof (next test) holds them to the merged weights."""
    import gguf

    out, result = task_build
    reader = gguf.GGUFReader(out / "adapters" / "intent.gguf")
    lora = [t for t in reader.tensors if t.name.endswith((".lora_a", ".lora_b"))]
    assert lora and {t.tensor_type for t in lora} == {gguf.GGMLQuantizationType.F16}
    rows = json.loads((out / "bench.json").read_text())["tasks"]["tasks"]
    assert all(r["proof"]["matches"] and r["proof"]["applied"] for r in rows)


def test_the_bench_proves_each_adapter_is_applied_and_budgets_the_whole_package(task_build):
    out, result = task_build
    tasks = json.loads((out / "bench.json").read_text())["tasks"]
    assert [r["task"] for r in tasks["tasks"]] == ["intent", "extract"]
    for row in tasks["tasks"]:
        p = row["proof"]
        assert p["matches"] and p["applied"], p
        assert p["kl_adapter_vs_merged"] < p["bound"] < p["kl_base_vs_merged"]
        assert row["quality"]["metric"] == {"intent": "label_accuracy_pct", "extract": "field_match_pct"}[row["task"]]
        assert row["ttft_ms_p90"] > 0 and row["adapter_bytes"] > 0
    assert tasks["package_bytes"] == tasks["base_bytes"] + sum(r["adapter_bytes"] for r in tasks["tasks"])
    assert tasks["switch_ms"] is not None and tasks["switch_ms"] >= 0
    assert {(b["task"], b["budget"]) for b in tasks["budget"]} >= {("intent", "adapter_applied"), ("extract", "adapter_applied"),
                                                                   ("base + every adapter", "package_mb")}
    assert "task adapters on one base" in result.output and "runtime vs merged" in result.output


def test_an_adapter_that_changes_nothing_or_another_adapter_fails_the_proof(tiny_llama_dir, tmp_path):
    """An adapter that loads and changes nothing is an error, not a pass; nor is a file whose effect is
    not the merged weights' (another adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from edgeft.backends.gguf.backend import LlamaCppRunner
    from edgeft.backends.gguf.convert import convert
    from edgeft.backends.gguf.lora import export_lora
    from edgeft.tasks.measure import proof

    def adapter(name: str, scale: float):
        torch.manual_seed(len(name))
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False, lora_dropout=0.0))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05).mul_(scale)
        peft_model.save_pretrained(tmp_path / name)
        return tmp_path / name, export_lora(tmp_path / name, tiny_llama_dir, tmp_path / f"{name}.gguf")

    reference = convert(tiny_llama_dir, tmp_path / "ref.gguf", "f16")
    records = [{"prompt": [5, 17, 42, 99], "target": [7, 250, 31, 64, 12, 3, 77, 150]}]
    runner = LlamaCppRunner(reference, threads=1, context=128)
    try:
        real_dir, real = adapter("real", 1.0)
        nothing_dir, nothing = adapter("nothing", 0.0)
        other_dir, other = adapter("other-one", 1.0)
        ok = proof(runner, tiny_llama_dir, real_dir, real, records)
        none = proof(runner, tiny_llama_dir, nothing_dir, nothing, records)
        wrong = proof(runner, tiny_llama_dir, real_dir, other, records)
    finally:
        runner.close()
    assert ok["matches"] and ok["applied"], ok
    assert not none["applied"], none  # B = 0: the merged model is the base
    assert not wrong["matches"], wrong
    assert np.isfinite(ok["export_floor"]) and ok["export_floor"] < ok["bound"]


def _refused(args, tmp_path, *, text: str):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert text in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (out / "adapters").exists() and not (out / "manifest.json").exists()


def test_an_unknown_task_name_is_one_line(tiny_llama_dir, task_files, tmp_path):
    _refused(["build", "--no-distill", "--model", str(tiny_llama_dir), "--task", f"intent={task_files['intent']}",
              "--task-modules", "reply=mlp"], tmp_path, text="unknown task name 'reply'")


def test_a_backend_without_adapters_is_one_line(tiny_llama_dir, task_files, tmp_path):
    _refused(["build", "--no-distill", "--model", str(tiny_llama_dir), "--target", "tensorrt", "--task",
              f"intent={task_files['intent']}"], tmp_path, text="cannot ship task adapters")


def test_no_teacher_needs_a_target_on_every_record(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "reply.jsonl", examples.task_rows("reply", 10))
    _refused(["build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(tiny_profile(tmp_path)),
              "--task", f"reply={data}", "--no-teacher"], tmp_path, text="10 of 10 records have no target")


@pytest.mark.parametrize("args, text", [(["--task", "intent"], "expected NAME=VALUE"),
                                        (["--task", "Bad Name=x.jsonl"], "must be lower-case"),
                                        (["--task", "a=missing.jsonl"], "no such data file")])
def test_malformed_task_flags_are_one_line(tiny_llama_dir, tmp_path, args, text):
    _refused(["build", "--no-distill", "--model", str(tiny_llama_dir), *args], tmp_path, text=text)


def test_a_backend_declares_adapters_exactly_when_it_exports_them(tmp_path):
    """The registry's adapter suffix and the backend's export agree: every backend without one refuses
    in one line; GGUF, which has one, is the one the build tests above export through."""
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import backend_names, get_backend, info
    from edgeft.errors import AdaptersUnsupported

    for name in backend_names():
        if info(name).adapter_suffix is None:
            base = Artifact(path=tmp_path / "base", backend=name, quant="x")
            with pytest.raises(AdaptersUnsupported, match=f"the {name} backend cannot ship task adapters"):
                get_backend(name).export_adapter(tmp_path, tmp_path, tmp_path / "x", base=base)
            with pytest.raises(AdaptersUnsupported, match=f"the {name} backend cannot ship task adapters"):
                get_backend(name).check_adapter(tmp_path / "x", base)
    assert info("gguf").adapter_suffix == ".gguf" and info("onnx").adapter_suffix == ".onnx_adapter"


def test_bench_with_an_adapter_and_an_adapter_for_another_base(task_build, tiny_llama_dir, tmp_path):
    """`edgeft bench BASE --adapter FILE` measures with the adapter active; the same adapter beside another
    base (here the same model at another level: same shapes, so llama.cpp would load it silently) is one
    line, exit 2, and no bench.json is written."""
    out, _ = task_build
    profile = out / "target.toml"
    mine = tmp_path / "mine.json"
    r = CliRunner().invoke(main, ["bench", str(out / "model-q8_0.gguf"), "--target", str(profile), "--adapter",
                                  str(out / "adapters" / "intent.gguf"), "--json", str(mine)])
    assert r.exit_code == 0, r.output
    assert json.loads(mine.read_text())["artifact"]["adapter"] == str(out / "adapters" / "intent.gguf")

    other = tmp_path / "other"
    assert CliRunner().invoke(main, ["--quiet", "compile", str(tiny_llama_dir), "--target", str(profile), "--quant", "q4_0",
                                     "--out", str(other)]).exit_code == 0
    theirs = tmp_path / "theirs.json"
    r = CliRunner().invoke(main, ["bench", str(other / "model-q4_0.gguf"), "--target", str(profile), "--adapter",
                                  str(out / "adapters" / "intent.gguf"), "--json", str(theirs)])
    assert r.exit_code == 2, r.output
    assert "exported for another base" in r.output and len(r.output.strip().splitlines()) == 1
    assert not theirs.exists()


def test_the_method_is_sft_on_human_targets_when_the_base_is_the_teacher(task_files, tmp_path):
    """With --no-distill the base is the teacher, and KD on human labels pulled the intent adapter back to
    the base's chatty answers (33 % against 72 % without it): such tasks train on their targets alone.
    Teacher-written targets, and a distilled base, keep KD; --no-teacher is always SFT."""
    from edgeft.tasks.spec import TaskSpec
    from edgeft.tasks.train import method_for

    labelled = TaskSpec("intent", task_files["intent"])
    written = TaskSpec("reply", write_jsonl(tmp_path / "reply.jsonl", examples.task_rows("reply", 5)))
    assert method_for(labelled, teacher=True, base_is_teacher=True) == "sft"
    assert method_for(written, teacher=True, base_is_teacher=True) == "kd"
    assert method_for(labelled, teacher=True, base_is_teacher=False) == "kd"
    assert method_for(labelled, teacher=False, base_is_teacher=False) == "sft"


def test_task_adapters_train_on_the_base_as_the_shipped_file_is_made_from_it(task_build):
    """An adapter trained on an NF4 base learns to correct NF4's error, which the q8_0 file does not have
    (reply: 6.09 against 5.15 with fp32): the build trains on the fp32 base."""
    out, _ = task_build
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["stages"]["tasks"]["adapters"]:
        assert entry["nf4_base"] is False and entry["method"] == "sft"  # labelled tasks on their own base
        meta = json.loads((out / "work" / "tasks" / entry["task"] / "distill" / "adapter" / "edgeft_adapter.json").read_text())
        assert meta["quantized_base"] is False


def test_a_build_files_tasks_table_names_the_same_tasks_as_the_flags(task_files, tmp_path):
    from edgeft.tasks.spec import parse_tasks, read_task_file

    folder = task_files["intent"].parent
    path = folder / "build.toml"
    path.write_text('[tasks]\nintent = "intent.jsonl"\nextract = { data = "extract.jsonl", modules = "attention" }\n')
    tasks, modules = read_task_file(path)
    assert parse_tasks(tasks, modules) == parse_tasks([f"intent={task_files['intent']}", f"extract={task_files['extract']}"],
                                                      ["extract=attention"])


@pytest.mark.parametrize("text, where", [('[tasks]\nintent = { data = "intent.jsonl", rank = 4 }\n', "tasks.intent.rank"),
                                         ('[tasks]\nintent = 3\n', "tasks.intent"),
                                         ('tasks = 1\n', "tasks"),
                                         ('[tasks]\nintent = "missing.jsonl"\n', "no such data file")])
def test_a_bad_tasks_table_is_one_line(tiny_llama_dir, task_files, tmp_path, text, where):
    path = task_files["intent"].parent / f"bad-{abs(hash(text))}.toml"
    path.write_text(text)
    _refused(["build", "--no-distill", "--model", str(tiny_llama_dir), "--tasks", str(path)], tmp_path, text=where)


def test_task_adapters_on_a_distilled_base(tiny_llama_dir, task_files, tmp_path):
    """With distillation the shared base is the distilled student: the adapter trains on it, against the
    teacher (KD), and is proven applied on the student's own export."""
    profile = tiny_profile(tmp_path, context=256)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["--quiet", "build", "--model", str(tiny_llama_dir), "--target", str(profile), "--out", str(out),
                                  "--data", str(task_files["extract"]), "--student-layers", "1",
                                  "--task", f"intent={task_files['intent']}"])
    assert r.exit_code in (0, 1), r.output  # 1: a tiny random student may miss the budget's quality lines
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["stages"]["tasks"]["adapters"][0]
    assert entry["method"] == "kd"  # the base is not the teacher: the teacher's logits teach
    assert "distill" in manifest["stages"] and (out / "adapters" / "intent.gguf").is_file()
    from transformers import AutoConfig

    student = AutoConfig.from_pretrained(json.loads((out / "work" / "distill" / "distill.json").read_text())["student"]["path"])
    assert student.num_hidden_layers == 1
    proof = json.loads((out / "bench.json").read_text())["tasks"]["tasks"][0]["proof"]
    assert proof["matches"] and proof["applied"], proof


def test_a_task_timing_line_that_fails_is_measured_again_and_the_least_disturbed_run_kept(monkeypatch):
    from dataclasses import replace

    from edgeft.config import Budget, load_target
    from edgeft.tasks import bench

    def raw(ttft_ms: float) -> dict:
        t = ttft_ms / 1000.0
        return {"peak_rss_mb": 100.0, "rss_before_load_mb": 40.0, "prompt_tokens": 64,
                "tasks": [{"runs": [{"token_times": [0.01, 0.02, 0.03]}]}, {"runs": [{"token_times": [t, t + 0.01, t + 0.02]}]}]}

    target = replace(load_target("gguf"), budget=Budget(ttft_ms_p90=200.0))
    seen = iter([raw(450.0), raw(150.0), raw(100.0)])
    kept, runs = bench._settled(lambda: next(seen), target)
    assert runs == 2 and kept["tasks"][1]["runs"][0]["token_times"][0] == pytest.approx(0.15)
    seen = iter([raw(450.0), raw(300.0), raw(400.0)])
    kept, runs = bench._settled(lambda: next(seen), target)  # every run fails: the lowest of three is kept
    assert runs == 3 and kept["tasks"][1]["runs"][0]["token_times"][0] == pytest.approx(0.30)
    seen = iter([raw(10_000.0)])
    assert bench._settled(lambda: next(seen), replace(target, budget=Budget(package_mb=350.0)))[1] == 1  # no timing line


def test_a_task_bench_run_made_again_times_only_and_keeps_the_first_runs_quality_and_proof(task_build, tiny_llama_dir,
                                                                                           monkeypatch):
    """Quality and the proof do not depend on load: a run made for a failing timing line measures
    latency alone, and the first run's quality and proof stand beside its timings."""
    from dataclasses import replace
    from pathlib import Path

    from edgeft.backends.base import Artifact
    from edgeft.bench import latency
    from edgeft.config import Budget, load_target
    from edgeft.tasks import bench

    out, result = task_build
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    compiled = manifest["stages"]["compile"]
    artifact = Artifact(path=out / compiled["artifact"], backend="gguf", quant=compiled["quant"])
    reference = Artifact(path=Path(compiled["reference"]), backend="gguf", quant="f16")
    target = load_target(out / "target.toml")
    target = replace(target, budget=Budget(ttft_ms_p90=1e-6))  # no run can pass: three runs
    calls, real = [], latency.run_worker

    def spy(*args, **kwargs):
        calls.append(kwargs)
        raw = real(*args, **kwargs)
        calls[-1] = {**kwargs, "raw": raw}
        return raw

    monkeypatch.setattr(latency, "run_worker", spy)
    res = bench.bench_tasks(artifact, reference, target, manifest["stages"]["tasks"]["adapters"], tiny_llama_dir)
    assert [c["timing_only"] for c in calls] == [False, True, True] and res["latency_runs"] == 3
    full = calls[0]["raw"]
    for timed in (c["raw"] for c in calls[1:]):
        assert all(set(t) == {"task", "runs"} for t in timed["tasks"])  # no quality, no proof: not measured again
    for row, first in zip(res["tasks"], full["tasks"]):
        assert row["quality"] == first["quality"] and row["proof"] == first["proof"]
    lines = {(line["task"], line["budget"]): line["status"] for line in res["budget"]}
    assert lines[("intent", "ttft_ms_p90")] == "FAIL" and lines[("intent", "adapter_applied")] == "PASS"


def test_with_timings_takes_the_timings_and_memory_of_the_run_made_again():
    from edgeft.tasks.bench import with_timings

    full = {"tasks": [{"task": "a", "runs": [1], "quality": {"value": 9}, "proof": {"matches": True}}],
            "switch_ms": 1.0, "base_runs": [1], "prompt_tokens": 64, "peak_rss_mb": 100.0, "rss_before_load_mb": 40.0}
    timed = {"tasks": [{"task": "a", "runs": [2]}], "switch_ms": 0.5, "base_runs": [2], "prompt_tokens": 64,
             "peak_rss_mb": 90.0, "rss_before_load_mb": 41.0}
    merged = with_timings(full, timed)
    assert merged["tasks"] == [{"task": "a", "runs": [2], "quality": {"value": 9}, "proof": {"matches": True}}]
    assert (merged["switch_ms"], merged["base_runs"], merged["peak_rss_mb"]) == (0.5, [2], 90.0)
    with pytest.raises(ValueError):  # another task list is a bug, not a merge
        with_timings(full, {**timed, "tasks": []})


def test_the_task_table_shows_how_many_records_an_accuracy_rests_on():
    from edgeft.tasks.bench import table

    proof = {"kl_adapter_vs_merged": 1e-5, "kl_base_vs_merged": 1.0, "matches": True, "applied": True}
    row = {"task": "sent", "quality": {"metric": "label_accuracy_pct", "value": 100.0, "records": 1},
           "base_quality": {"metric": "label_accuracy_pct", "value": 0.0, "records": 1}, "ttft_ms_p90": 10.0,
           "ms_per_token_p90": 1.0, "adapter_bytes": 1000, "proof": proof}
    result = {"tasks": [row], "base_bytes": 1e6, "package_bytes": 1.001e6, "switch_ms": None, "budget": []}
    text = table(result)
    assert "held-out" in text.splitlines()[2] and "few held-out records for an accuracy: sent (1)" in text
    row["quality"]["records"] = 48
    assert "few held-out" not in table(result)
