"""Interrupted writes leave nothing under the final name."""

from __future__ import annotations

import pytest

from edgeft.atomic_io import atomic_dir, atomic_path, write_json


def test_failed_write_leaves_nothing(tmp_path):
    final = tmp_path / "model.gguf"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path):
    final = tmp_path / "bench.json"
    write_json(final, {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert final.read_text().strip().endswith("}")
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_written_file_has_normal_permissions(tmp_path):
    final = tmp_path / "x.json"
    write_json(final, {})
    assert final.stat().st_mode & 0o044 == 0o044  # group and others can read a shipped file


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "hf"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert [p.name for p in final.iterdir()] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_check_writable_refuses_what_cannot_be_written_and_leaves_nothing(tmp_path):
    from edgeft.atomic_io import check_writable
    from edgeft.errors import EdgeftError

    check_writable(tmp_path / "new" / "deeper" / "bench.json", "--json")  # missing folders are made on write
    check_writable(tmp_path / "out", "--out", folder=True)
    assert list(tmp_path.iterdir()) == []  # the probe leaves no file and makes no folder
    (tmp_path / "f").write_text("")
    with pytest.raises(EdgeftError, match="--json: cannot be written: .* is a file, not a folder"):
        check_writable(tmp_path / "f" / "bench.json", "--json")
    with pytest.raises(EdgeftError, match="--out: is a file; give a folder path"):
        check_writable(tmp_path / "f", "--out", folder=True)
    with pytest.raises(EdgeftError, match="--json: is a folder; give a file path"):
        check_writable(tmp_path, "--json")


def test_a_folder_written_by_a_library_gets_normal_read_permissions(tmp_path):
    """safetensors writes through a 0600 temporary file; the shipped folder must not keep that."""
    import os
    import stat

    from edgeft.atomic_io import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "merged") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            os.chmod(tmp / "model.safetensors", 0o600)
        assert stat.S_IMODE((tmp_path / "merged" / "model.safetensors").stat().st_mode) == 0o644
    finally:
        os.umask(old)
