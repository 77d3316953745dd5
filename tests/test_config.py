"""Target profiles: every shipped one loads; bad ones are refused naming file, key and reason."""

from __future__ import annotations

import pytest

from edgeft.config import load_target, shipped_targets, targets_dir
from edgeft.errors import ConfigError


@pytest.mark.parametrize("name", shipped_targets())
def test_shipped_profiles_load(name):
    target = load_target(name)
    assert target.name == name
    assert target.budget.ttft_ms_p90 == 200
    # The product budget, except the tight profile that forces pruning (below the default model at its pinned level).
    assert target.budget.package_mb == (90 if name == "gguf-small" else 350)
    assert target.budget.ppl_vs_source_pct is not None  # quality against the source, on every profile
    assert target.budget.answer_ppl_vs_source_pct is not None  # and the answers a person would see


def test_shipped_profiles_cover_the_walking_skeleton():
    assert {"gguf", "gguf-q8", "gguf-q4_0", "gguf-f16"} <= set(shipped_targets())
    assert load_target("gguf").quant == "q8_0"


def test_profile_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('backend = "gguf"\nquant = "q5_k_m"\nthreads = 2\n[budget]\npackage_mb = 50\n')
    target = load_target(str(path))
    assert (target.quant, target.threads, target.budget.package_mb, target.budget.ttft_ms_p90) == ("q5_k_m", 2, 50.0, None)


BAD = {
    "unknown key": ('backend = "gguf"\nquant = "q4_0"\ncolour = "red"\n', "colour"),
    "wrong type": ('backend = "gguf"\nquant = "q4_0"\nthreads = "four"\n', "threads"),
    "negative budget": ('backend = "gguf"\nquant = "q4_0"\n[budget]\npackage_mb = -5\n', "budget.package_mb"),
    "unknown backend": ('backend = "coreml"\nquant = "q4_0"\n', "backend"),
    "unknown quant": ('backend = "gguf"\nquant = "q3_xyz"\n', "quant"),
    "unknown budget key": ('backend = "gguf"\nquant = "q4_0"\n[budget]\nlatency = 5\n', "budget.latency"),
    "bad toml": ('backend = "gguf\n', "invalid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_profiles_are_refused(case, tmp_path):
    text, key = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_target(str(path))
    message = info.value.one_line()
    assert str(path) in message and key in message and "\n" not in message


def test_every_problem_reported_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('backend = "gguf"\nquant = "nope"\nthreads = -1\n[bench]\nruns = 0\n')
    with pytest.raises(ConfigError) as info:
        load_target(str(path))
    keys = {k for k, _ in info.value.problems}
    assert keys == {"quant", "threads", "bench.runs"}


def test_unknown_name_lists_shipped_profiles():
    with pytest.raises(ConfigError, match="shipped profiles: .*gguf"):
        load_target("no-such-target")


def test_overrides_are_validated():
    target = load_target("gguf")
    assert target.with_overrides(quant="q8_0").quant == "q8_0"
    with pytest.raises(ConfigError, match="quant"):
        target.with_overrides(quant="q9_9")


def test_a_bad_flag_is_named_as_the_flag_not_as_the_profile():
    """The profile was valid: `--threads -3` is the flag's problem, not gguf.toml's."""
    with pytest.raises(ConfigError) as info:
        load_target("gguf").with_overrides(threads=-3)
    assert info.value.one_line().startswith("--threads: ") and "gguf.toml" not in info.value.one_line()


def test_targets_dir_is_the_repository_folder():
    assert (targets_dir() / "gguf.toml").is_file()


def test_targets_validate_command(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "gguf"\nquant = "zz"\n')
    ok = CliRunner().invoke(main, ["targets", "validate", "gguf", "gguf-q8"])
    assert ok.exit_code == 0 and "gguf: ok" in ok.output
    result = CliRunner().invoke(main, ["targets", "validate", "gguf", str(bad)])
    assert result.exit_code == 2
    assert "quant" in result.output


def test_a_folder_named_like_a_shipped_profile_does_not_hide_it(tmp_path, monkeypatch):
    """`edgeft build --out onnx` leaves ./onnx; the next `--target onnx` still means the shipped profile."""
    (tmp_path / "onnx").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_target("onnx").backend == "onnx"
    (tmp_path / "mine").write_text('backend = "gguf"\nquant = "q4_0"\n')  # a file by that bare name is still read
    assert load_target("mine").quant == "q4_0"
