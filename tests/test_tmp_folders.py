"""The test suite's own disk discipline: a module's shared folders go when it passes, stay when it fails."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

MODULE = '''
import pytest

@pytest.fixture(scope="module")
def shared(module_tmp):
    folder = module_tmp("shared")
    (folder / "model.bin").write_bytes(b"x" * 1000)
    return folder

def test_writes(shared):
    from pathlib import Path
    Path({record!r}).write_text(str(shared))

def test_second(shared):
    assert {ok}
'''


def _run(pytester, monkeypatch, tmp_path: Path, ok: bool) -> tuple[Path, object]:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the plugin, for the inner run
    record = tmp_path / "where.txt"
    pytester.makepyfile(test_inner=MODULE.format(record=str(record), ok=ok))
    result = pytester.runpytest_subprocess("-p", "tmp_folders", "-p", "no:cacheprovider",
                                           f"--rootdir={pytester.path}", "-o", "tmp_path_retention_policy=all")
    return Path(record.read_text()), result


def test_a_passed_modules_folders_are_removed_when_it_ends(pytester, monkeypatch, tmp_path):
    folder, result = _run(pytester, monkeypatch, tmp_path, ok=True)
    result.assert_outcomes(passed=2)
    assert folder.name.startswith("shared") and not folder.exists()


def test_a_failed_modules_folders_are_kept_to_look_at(pytester, monkeypatch, tmp_path):
    folder, result = _run(pytester, monkeypatch, tmp_path, ok=False)
    result.assert_outcomes(passed=1, failed=1)
    assert (folder / "model.bin").stat().st_size == 1000
