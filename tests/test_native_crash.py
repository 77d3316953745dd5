"""Native code runs in child processes; a child that dies by a signal becomes one named line and exit 1."""

from __future__ import annotations

import os
import signal

import click
import pytest
from click.testing import CliRunner

from edgeft.child import ChildFailed, NativeCrash, call, signal_message
from edgeft.errors import ArtifactError, EdgeftError


def _die(sig: int) -> None:
    os.kill(os.getpid(), sig)


def _raise_user_error() -> None:
    raise ArtifactError("truncated GGUF file", file="model.gguf")


def _raise_bug() -> None:
    raise ZeroDivisionError("division by zero")


def _answer(x: int) -> dict:
    return {"double": 2 * x}


def test_signal_lines_name_the_signal_and_its_cause():
    assert signal_message(0, "x") is None and signal_message(1, "x") is None
    ill = signal_message(-signal.SIGILL, "the bench")
    assert ill.startswith("the bench died by SIGILL") and "make setup" in ill and "instruction" in ill
    kill = signal_message(-signal.SIGKILL, "the bench")
    assert kill.startswith("the bench died by SIGKILL") and "memory" in kill


@pytest.mark.parametrize("sig, words", [(signal.SIGILL, ("SIGILL", "make setup")), (signal.SIGKILL, ("SIGKILL", "memory"))])
def test_a_child_that_really_dies_by_a_signal_is_named(sig, words):
    with pytest.raises(NativeCrash) as info:
        call(_die, int(sig), what="the probe")
    assert info.value.exit_code == 1
    for word in words:
        assert word in str(info.value)


def test_results_and_errors_keep_their_meaning_across_the_child():
    assert call(_answer, 21, what="x") == {"double": 42}
    with pytest.raises(EdgeftError) as user:
        call(_raise_user_error, what="x")
    assert user.value.exit_code == 2 and user.value.one_line() == "model.gguf: truncated GGUF file"
    with pytest.raises(ChildFailed) as bug:
        call(_raise_bug, what="the export check")
    assert bug.value.exit_code == 1 and "ZeroDivisionError: division by zero" in str(bug.value)


@pytest.fixture
def crash_command():
    """A throwaway subcommand on the real `edgeft` group whose work dies in a child by the given signal."""
    from edgeft.cli import main

    @main.command("test-crash")
    @click.argument("sig", type=int)
    def crash(sig: int) -> None:
        call(_die, sig, what="the test child")

    yield main
    main.commands.pop("test-crash")


@pytest.mark.parametrize("sig, word", [(signal.SIGILL, "SIGILL"), (signal.SIGKILL, "SIGKILL")])
def test_the_cli_prints_one_line_and_exits_1(crash_command, sig, word):
    result = CliRunner().invoke(crash_command, ["test-crash", str(int(sig))])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeft: internal error: the test child died by " + word), result.output
    assert "Traceback" not in result.output


def test_a_bench_worker_killed_by_a_signal_is_internal_not_bad_input(tiny_gguf, tmp_path, monkeypatch):
    """Regression: a worker dead by SIGILL was reported as 'the benchmark process failed (exit -4)', exit 2."""
    import sys

    from edgeft.backends.base import Artifact
    from edgeft.bench import latency
    from edgeft.config import load_target

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import os, signal; os.kill(os.getpid(), signal.SIGILL)'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(latency.sys, "executable", str(fake))
    with pytest.raises(NativeCrash) as info:
        latency.run_worker(Artifact(path=tiny_gguf, backend="gguf", quant="f16"), load_target("gguf"))
    assert "SIGILL" in str(info.value) and info.value.exit_code == 1
