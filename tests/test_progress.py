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
