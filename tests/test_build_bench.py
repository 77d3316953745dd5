"""`edgeft build` on a tiny model: outputs, bench fields, budget verdicts and exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.cli import main

METRICS = [
    "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_cv", "ms_per_token_p50", "ms_per_token_p90", "ms_per_token_cv",
    "decode_tok_s_p50", "decode_tok_s_p90", "prefill_tok_s_p50", "prefill_tok_s_p90",
    "peak_rss_mb", "model_rss_mb", "package_mb", "model_mb",
]


def _profile(tmp_path, budget: str, quant: str = "q8_0"):
    path = tmp_path / "tiny.toml"
    path.write_text(
        f'backend = "gguf"\nquant = "{quant}"\nthreads = 1\n'
        "[bench]\nprompt_tokens = 16\nnew_tokens = 8\nruns = 3\nwarmup = 1\ncontext = 128\n"
        f"[budget]\n{budget}\n"
    )
    return path


@pytest.fixture(scope="module")
def tiny_build(tiny_llama_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    out = tmp / "out"
    profile = _profile(tmp, "package_mb = 350\nttft_ms_p90 = 100000")
    result = CliRunner().invoke(main, ["--quiet", "build", "--model", str(tiny_llama_dir), "--target", str(profile), "--out", str(out)])
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
    result = CliRunner().invoke(main, ["--quiet", "build", "--model", str(tiny_llama_dir), "--target", str(profile), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output
    bench = json.loads((out / "bench.json").read_text())
    assert bench["pass"] is False and bench["budget"][0]["status"] == "FAIL"


def test_json_output(tiny_llama_dir, tmp_path):
    profile = _profile(tmp_path, "package_mb = 350", quant="f16")
    result = CliRunner().invoke(main, ["--quiet", "build", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--out", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[: result.output.rindex("}") + 1])
    assert data["target"]["quant"] == "f16"


def test_rebuild_reuses_conversion(tiny_build, tiny_llama_dir, tmp_path):
    """A second build with another quant level reuses the stamped f16 conversion of the same source."""
    out, _ = tiny_build
    stamp = out / "work" / "convert-f16" / ".stage.json"
    before = stamp.stat().st_mtime_ns
    profile = _profile(tmp_path, "package_mb = 350", quant="q4_0")
    result = CliRunner().invoke(main, ["--quiet", "build", "--model", str(tiny_llama_dir), "--target", str(profile),
                                       "--out", str(out), "--no-bench"])
    assert result.exit_code == 0, result.output
    assert stamp.stat().st_mtime_ns == before
    assert (out / "model-q4_0.gguf").is_file()
