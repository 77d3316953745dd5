"""The small file a folder artifact carries to say which backend made it and at which level, so a
folder given to `edgeft bench` is identified by what it says, never by its name."""

from __future__ import annotations

import json
from pathlib import Path

MARKER = "edgeft_export.json"


def marker(backend: str, quant: str) -> dict:
    return {"backend": backend, "quant": quant}


def read_marker(path: Path) -> dict | None:
    """What a folder (or the folder beside its graph file) says about itself, else None."""
    folder = path.parent if path.is_file() else path
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_level(path: Path, backend: str) -> str | None:
    """The level recorded in a folder (or beside its graph file) that `backend` exported, else None."""
    data = read_marker(path)
    return data.get("quant") if data is not None and data.get("backend") == backend else None
