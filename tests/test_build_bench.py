"""`edgeft build` on a tiny model: outputs, bench fields, budget verdicts and exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from tiny_models import tiny_profile

METRICS = [
    "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_cv", "ms_per_token_p50", "ms_per_token_p90", "ms_per_token_cv",
    "decode_tok_s_p50", "decode_tok_s_p90", "prefill_tok_s_p50", "prefill_tok_s_p90",
    "peak_rss_mb", "model_rss_mb", "package_mb", "model_mb",
]


def _profile(tmp_path, budget: str, quant: str = "q8_0"):
    return tiny_profile(tmp_path, quant=quant, budget=budget)


@pytest.fixture(scope="module")
def tiny_build(tiny_llama_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    out = tmp / "out"
    profile = _profile(tmp, "package_mb = 350\nttft_ms_p90 = 100000")
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile), "--out", str(out)])
    return out, result


def test_build_writes_every_output(tiny_build):
    out, result = tiny_build
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"model-q8_0.gguf", "bench.json", "manifest.json", "target.toml"} <= names
    assert not [n for n in names if n.endswith(".partial")]
    assert "PASS" in result.output and "ttft_ms_p90" in result.output


def test_bench_json_fields_are_sane(tiny_build):
    out, _ = tiny_build
    bench = json.loads((out / "bench.json").read_text())
    m = bench["metrics"]
    for key in METRICS:
        assert key in m, key
    for key in METRICS:
        if not key.endswith("_cv"):
            assert m[key] > 0, key
    for stem in ("ttft_ms", "ms_per_token", "decode_tok_s", "prefill_tok_s"):
        assert m[f"{stem}_p90"] >= m[f"{stem}_p50"]
    assert len(bench["runs"]) == 3
    assert bench["artifact"]["package_bytes"] == (out / "model-q8_0.gguf").stat().st_size
    assert bench["machine"]["threads"] == 1 and bench["machine"]["cpu"]
    assert "llama-cpp-python" in bench["versions"]
    assert bench["runtime_counters"]["n_eval"] == 3 * 7  # 8 tokens: 1 from prefill + 7 decode steps, per run
    assert bench["pass"] is True
    assert [b["budget"] for b in bench["budget"]] == ["ttft_ms_p90", "package_mb"]
    assert [t["kept"] for t in bench["latency_tries"]] == [True]  # its timing passed: measured once


def test_manifest_records_sources_outputs_and_versions(tiny_build, tiny_llama_dir):
    from edgeft.manifest import sha256

    out, _ = tiny_build
    manifest = json.loads((out / "manifest.json").read_text())
    weights = [f for f in manifest["source_model"]["files"] if f["path"] == "model.safetensors"]
    assert weights and weights[0]["sha256"] == sha256(tiny_llama_dir / "model.safetensors")
    outputs = {o["path"]: o for o in manifest["outputs"]}
    assert outputs["model-q8_0.gguf"]["sha256"] == sha256(out / "model-q8_0.gguf")
    for pkg in ("edgeft", "torch", "transformers", "gguf", "llama-cpp-python"):
        assert pkg in manifest["versions"]
    assert manifest["target"]["quant"] == "q8_0"
    assert manifest["stages"]["export_check"]["token_mismatches"] == 0


def test_failed_budget_exits_1(tiny_llama_dir, tmp_path):
    profile = _profile(tmp_path, "package_mb = 0.001")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output
    bench = json.loads((out / "bench.json").read_text())
    assert bench["pass"] is False and bench["budget"][0]["status"] == "FAIL"


def test_a_build_whose_timing_line_fails_measures_it_again_as_the_student_search_does(tiny_llama_dir, tmp_path):
    profile = _profile(tmp_path, "package_mb = 350\nttft_ms_p90 = 0.001")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--out", str(out)])
    assert result.exit_code == 1, result.output
    bench = json.loads((out / "bench.json").read_text())
    tries = bench["latency_tries"]
    assert len(tries) == 3 and sum(t["kept"] for t in tries) == 1
    kept = next(t for t in tries if t["kept"])
    assert kept["ttft_ms_p90"] == min(t["ttft_ms_p90"] for t in tries) == bench["metrics"]["ttft_ms_p90"]
    assert "latency measured 3 times" in result.output


def test_json_output(tiny_llama_dir, tmp_path):
    profile = _profile(tmp_path, "package_mb = 350", quant="f16")
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--out", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout is the JSON document alone
    assert data["target"]["quant"] == "f16"


def test_rebuild_reuses_conversion(tiny_build, tiny_llama_dir, tmp_path):
    """A second build with another quant level reuses the stamped f16 conversion of the same source."""
    out, _ = tiny_build
    stamp = out / "work" / "reference-gguf-f16" / ".stage.json"
    before = stamp.stat().st_mtime_ns
    profile = _profile(tmp_path, "package_mb = 350", quant="q4_0")
    result = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--out", str(out), "--no-bench"])
    assert result.exit_code == 0, result.output
    assert stamp.stat().st_mtime_ns == before
    assert (out / "model-q4_0.gguf").is_file()
    assert not (out / "bench.json").exists()  # the old bench described another artifact


def test_export_check_records_output_agreement(tiny_build):
    out, _ = tiny_build
    outputs = json.loads((out / "manifest.json").read_text())["stages"]["export_check"]["outputs"]
    assert 0.5 < outputs["top1_agreement"] <= 1.0  # q8_0 of a tiny random model keeps most argmaxes
    assert outputs["positions"] > 20


def test_export_check_fails_on_wrong_numerics(tiny_llama_dir, tmp_path):
    """A converter bug (here: a corrupted output norm) must stop the build with the max difference."""
    import shutil

    from edgeft.backends.gguf.backend import LlamaCppRunner
    from edgeft.backends.gguf.convert import convert
    from edgeft.errors import ParityError
    from edgeft.export_check import check_outputs

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    out = convert(tiny_llama_dir, tmp_path / "ok.gguf", "f32")
    from safetensors.torch import load_file, save_file

    weights = load_file(broken / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1.5
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    runner = LlamaCppRunner(out, threads=1, context=128)
    try:
        assert check_outputs(tiny_llama_dir, runner, "f32", 1e-3)["max_rel_logit_error"] < 1e-3
        with pytest.raises(ParityError, match="max relative error"):
            check_outputs(broken, runner, "f32", 1e-3)
    finally:
        runner.close()


def test_verify_detects_a_changed_output(tiny_build, tmp_path):
    import shutil

    out, _ = tiny_build
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("work"))
    ok = CliRunner().invoke(main, ["verify", str(copy)])
    assert ok.exit_code == 0, ok.output
    with open(copy / "target.toml", "a") as fh:
        fh.write(" ")
    bad = CliRunner().invoke(main, ["verify", str(copy)])
    assert bad.exit_code == 1 and "target.toml" in bad.output


@pytest.mark.parametrize("manifest, needle", [
    ('{"outputs": "x"}', "`outputs` must list"), ('{"outputs": []}', "`outputs` must list"), ("{}", "`outputs` must list"),
    ('{"outputs": [{"path": "a"}]}', "outputs[0]: malformed manifest: an output needs"),
    ('{"outputs": [{"path": "../../etc/hostname", "bytes": 1, "sha256": "x"}]}', "outside the build folder"),
    ('{"outputs": [{"path": "/etc/hostname", "bytes": 1, "sha256": "x"}]}', "outside the build folder"),
    ("{not json", "not JSON"),
])
def test_a_malformed_manifest_is_bad_input_not_a_pass(tmp_path, manifest, needle):
    """An empty list would verify nothing, and a path outside the folder is not the build's file."""
    (tmp_path / "manifest.json").write_text(manifest)
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and needle in result.output, result.output


def test_verify_follows_an_output_that_is_a_symlink(tmp_path):
    """git-annex and DVC link a build's files: the path is the build's, wherever its bytes live."""
    import json

    from edgeft.manifest import sha256

    store = tmp_path / "store"
    store.mkdir()
    (store / "m.gguf").write_bytes(b"model")
    build = tmp_path / "build"
    build.mkdir()
    (build / "m.gguf").symlink_to(store / "m.gguf")
    (build / "loop").symlink_to(build / "loop")
    entries = [{"path": "m.gguf", "bytes": 5, "sha256": sha256(store / "m.gguf")}]
    (build / "manifest.json").write_text(json.dumps({"outputs": entries}))
    assert CliRunner().invoke(main, ["verify", str(build)]).exit_code == 0
    (build / "manifest.json").write_text(json.dumps({"outputs": [*entries, {"path": "loop", "bytes": 1, "sha256": "x"}]}))
    result = CliRunner().invoke(main, ["verify", str(build)])
    assert result.exit_code == 1 and "loop: missing" in result.output


def test_compile_command(tiny_llama_dir, tmp_path):
    result = CliRunner().invoke(main, ["compile", str(tiny_llama_dir), "--target", "gguf-q8", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "model-q8_0.gguf").is_file()
    # the build's compile stage (issue 15): the model, its profile and manifest, and the reused work/
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["manifest.json", "model-q8_0.gguf", "target.toml", "work"]
