"""CLI: help for every command, light imports, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgeft.cli import main

COMMANDS = sorted(main.commands)


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("args", [[], ["--quiet"]])
def test_edgeft_alone_shows_the_help_and_succeeds(args):
    """A first `edgeft` is a question, not a mistake: the help and exit 0 (click 8.2 would exit 2)."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "edgeft build --target gguf" in result.output


def test_import_is_light():
    """`edgeft --help` must be instant: importing the CLI may not pull in torch, transformers or llama_cpp."""
    code = "import sys, edgeft.cli, edgeft.config, edgeft.backends.registry; print(sorted(m for m in ('torch','transformers','llama_cpp','gguf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_targets_lists_every_shipped_profile():
    from edgeft.config import shipped_targets

    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0
    for name in shipped_targets():
        assert name in result.output


def test_doctor_shows_the_instruction_sets_and_runs_the_smoke_probe():
    """doctor reports llama.cpp's own system info, the flags make setup built it with, and a real probe:
    a 64-token prompt at q4_0, q8_0 and q4_k_m on the default model."""
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    gguf = next(r for r in json.loads(result.output) if r["backend"] == "gguf")
    assert gguf["available"] is True
    details = gguf["details"]
    assert "AVX2 = 1" in details["system_info"]
    assert "AMX" not in details["build_flags"]
    smoke = details["smoke"]
    assert smoke["ok"] and smoke["prompt_tokens"] >= 64
    assert [lv["quant"] for lv in smoke["levels"]] == ["q4_0", "q8_0", "q4_k_m"]
    assert all(lv["ok"] and lv["prompt_tokens"] >= 64 and lv["new_tokens"] > 0 for lv in smoke["levels"])

    text = CliRunner().invoke(main, ["doctor"]).output
    assert "gguf system info: CPU : " in text and "gguf smoke probe: PASS (64-token prompt)" in text


def test_doctor_fails_when_the_installed_build_faults(monkeypatch):
    from edgeft.backends.gguf import smoke as gguf_smoke

    crashed = {"ok": False, "model": "m", "prompt_tokens": 64, "levels": [
        {"quant": "q4_0", "ok": False, "error": "llama.cpp at q4_0 on a 64-token prompt died by SIGILL: an instruction ..."}]}
    monkeypatch.setattr(gguf_smoke, "probe", lambda *a, **k: crashed)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert "SIGILL" in result.output and "make setup LLAMA_ISA=avx2" in result.output
    assert gguf_smoke.main([]) == 1  # the setup step fails on the same result


def _run_cli(args: list[str], cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeft.cli", *args], capture_output=True, text=True, cwd=cwd)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_model_path(tmp_path):
    out = tmp_path / "out"
    proc = _run_cli(["build", "--no-distill", "--model", str(tmp_path / "nope"), "--out", str(out)])
    _assert_one_line_error(proc, str(tmp_path / "nope"), "no such file")
    assert not out.exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    out = tmp_path / "out"
    proc = _run_cli(["build", "--no-distill", "--model", str(tmp_path / "m"), "--out", str(out)])
    _assert_one_line_error(proc, "config.json is missing")
    assert not out.exists()


def test_unsupported_architecture(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    out = tmp_path / "out"
    proc = _run_cli(["build", "--no-distill", "--model", str(model), "--out", str(out)])
    _assert_one_line_error(proc, "GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM")
    assert not out.exists()


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    out = tmp_path / "out"
    proc = _run_cli(["build", "--no-distill", "--model", str(bad), "--out", str(out)])
    _assert_one_line_error(proc, "broken.gguf", "corrupt")
    assert not out.exists()


def test_bad_target(tmp_path):
    profile = tmp_path / "t.toml"
    profile.write_text('backend = "gguf"\nquant = "q4_0"\n[budget]\nttft_ms_p90 = -1\n')
    proc = _run_cli(["build", "--no-distill", "--target", str(profile), "--out", str(tmp_path / "out")])
    _assert_one_line_error(proc, "t.toml", "budget.ttft_ms_p90", "positive")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--target", "--tasks"])
def test_a_folder_given_as_a_toml_file_is_one_line(tmp_path, flag):
    folder = tmp_path / "profiles.toml"
    folder.mkdir()
    proc = _run_cli(["build", "--no-distill", flag, str(folder), "--out", str(tmp_path / "out")])
    _assert_one_line_error(proc, "profiles.toml", "a folder, not a TOML file")
    assert not (tmp_path / "out").exists()


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    proc = _run_cli(["build", "--no-distill", "--model", str(bad), "--out", str(tmp_path / "out")])
    _assert_one_line_error(proc, "weights.bin", ".gguf")


def test_the_quantization_lever_names_the_next_level_of_the_files_own_backend():
    from edgeft.cli import _higher_level

    assert "`--quant int8`" in _higher_level({"backend": "onnx", "quant": "int4"})
    assert "`--quant q5_k_m`" in _higher_level({"backend": "gguf", "quant": "q4_k_m"})
    assert "--quant f16" in _higher_level({"backend": "gguf", "quant": "q8_0"})
    assert _higher_level({"backend": "onnx", "quant": "fp32"}).startswith("`--quant auto`")


@pytest.mark.parametrize("args, says", [
    (["build", "--preset", "huge"], "edgeft build: Invalid value for '--preset': 'huge' is not one of 'demo', 'full'"),
    (["bench", "--runs", "3"], "edgeft bench: No such option '--runs'. (Did you mean one of: '--junit', '--rounds'?)"),
    (["--bogus"], "edgeft: No such option '--bogus'"),
    (["nosuch"], "edgeft: No such command 'nosuch'"),
    (["data", "prepare", "--eval-fraction", "x"], "edgeft data prepare: Invalid value for '--eval-fraction'"),
])
def test_a_bad_flag_is_one_line_with_exit_2(args, says):
    """click's own usage errors came as three lines (usage, hint, error); every other bad input is one."""
    result = CliRunner().invoke(main, args, prog_name="edgeft")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeft: error: ") and says in lines[0], result.output
    assert "-h' for help)" in lines[0]


def test_a_bare_group_still_shows_its_help():
    result = CliRunner().invoke(main, ["data"])
    assert "Usage:" in result.output and "inspect" in result.output
