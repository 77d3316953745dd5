"""A pytest plugin: folders for a module's shared fixtures that do not outlive the module.

pytest keeps every `tmp_path_factory` folder until the session ends. The slow modules hold real
models of hundreds of MB each, so a whole run would need the disk of all of them at once; with
these folders it needs the disk of one module.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """`tmp_path_factory.mktemp` whose folders are removed when the module ends with none of its tests
    failed; a failure keeps them to look at, as pytest keeps a failed test's `tmp_path`."""
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
