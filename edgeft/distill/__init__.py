"""Knowledge distillation with QLoRA: `run(teacher, data, out_dir, config) -> adapter folder`.

Heavy modules load only when `run` is called, so importing this package stays cheap."""

from __future__ import annotations

from pathlib import Path

from edgeft.distill.config import PRESETS, DistillConfig, preset

__all__ = ["DistillConfig", "PRESETS", "preset", "run", "open_data"]


def run(teacher: str, data, out_dir: Path, config: DistillConfig = DistillConfig(), *, resume: bool = False,
        cache_dir: Path | None = None) -> Path:
    from edgeft.distill.loop import run as _run

    return _run(teacher, data, out_dir, config, resume=resume, cache_dir=cache_dir)


def open_data(data: Path, teacher: str, out_dir: Path):
    """A prepared folder (train.jsonl + eval.jsonl) as it is, or a raw data file prepared by the data stage."""
    from edgeft.distill.records import open_prepared
    from edgeft.errors import EdgeftError

    data = Path(data)
    if data.is_dir():
        return open_prepared(data)
    if not data.is_file():
        raise EdgeftError("no such file or folder", file=data)
    try:
        from edgeft.data.prepare import prepare
    except ImportError:
        raise EdgeftError("a raw data file needs the data stage (edgeft.data), which is not installed; "
                          "pass a prepared folder with train.jsonl and eval.jsonl", file=data) from None
    return prepare(data, teacher, Path(out_dir) / "data")
