"""Atomic writes: a reader never sees a half-written file under its final name."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shipped file gets normal permissions
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _readable_as_umask_allows(folder: Path) -> None:
    """Libraries that write through their own temporary files (safetensors' shards) leave them 0600
    while their siblings are 0644: a shipped folder gets the read bits the umask allows, throughout."""
    read = 0o444 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o7777
            if mode & read != read:
                os.chmod(path, mode | read)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _readable_as_umask_allows(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: Path, option: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a file where a folder is needed
    (or the reverse), or no write permission in the folder that would hold it. Why before: a bench or
    build that runs for minutes and then fails to write its report gives a CI job the exit code of a
    failed budget. Missing parent folders are fine: they are made on write."""
    from edgeft.errors import EdgeftError

    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise EdgeftError(f"is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'} path",
                          file=path, place=option)
    parent = path if path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EdgeftError(f"cannot be written: {parent} is a file, not a folder", file=path, place=option)
    try:  # a probe, not os.access: root passes os.access on folders it cannot write (/proc, read-only mounts)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise EdgeftError(f"cannot be written in {parent}: {exc.strerror or exc}", file=path, place=option) from None


def write_text(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(final: Path, data: Any) -> None:
    write_text(final, json.dumps(data, indent=2, sort_keys=False) + "\n")
