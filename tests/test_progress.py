"""Quiet means quiet: no library draws a bar when we do not show progress ourselves."""

from __future__ import annotations

import pytest

from edgeft import progress


@pytest.fixture
def quiet():
    progress.set_quiet(True)
    yield
    progress.set_quiet(False)


def test_quiet_silences_the_transformers_gguf_loader_bar(quiet, capsys):
    gguf_utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    progress.quiet_libraries()
    progress.quiet_libraries()  # twice: wraps once
    assert list(gguf_utils.tqdm(range(5), desc="Converting and de-quantizing GGUF tensors...")) == list(range(5))
    captured = capsys.readouterr()
    assert "de-quantizing" not in captured.err + captured.out


def test_muted_native_stderr_keeps_the_reason_a_failure_logged(capfd):
    """Native code writing to file descriptor 2 is kept off the terminal, and its error line is what
    `reason()` gives (a quantizer that fails says why, not only its return code)."""
    import os
    from pathlib import Path

    with progress.muted_native_stderr() as log:
        os.write(2, b"loading tensor 1\nllama_model_loader: failed to load model from x.gguf\nfreed 3 buffers\n")
    assert capfd.readouterr().err == ""
    assert log.reason() == "llama_model_loader: failed to load model from x.gguf"
    with progress.muted_native_stderr() as named:
        os.write(2, b"error: cannot open /tmp/some/dir/model.gguf\n")
    assert named.reason(Path("/tmp/some/dir/model.gguf")) == "error: cannot open model.gguf"  # the file, not its folders
    with progress.muted_native_stderr() as quiet:
        os.write(2, b"one line\nlast line\n")
    assert quiet.reason() == "last line"
    with progress.muted_native_stderr() as silent:
        pass
    assert silent.reason() == ""
