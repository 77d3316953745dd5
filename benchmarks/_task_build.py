"""What the task-adapter benchmarks read back from `task_adapters.py`'s build folder (not part of the
edgeft package): the profile, the base as built, its reference and the per-task manifest entries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskBuild:
    target: object  # edgeft.config.Target
    artifact: object  # edgeft.backends.base.Artifact: the shipped base
    reference: object  # its unquantized reference export
    base_dir: Path  # the base as an HF folder (--no-distill: the source)
    base_key: str
    entries: dict[str, dict]  # task name -> manifest entry


def read_task_build(folder: Path) -> TaskBuild:
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import info
    from edgeft.config import load_target

    manifest = json.loads((folder / "manifest.json").read_text())
    target = load_target(str(folder / "target.toml"))
    compiled = manifest["stages"]["compile"]
    entries = {e["task"]: e for e in manifest["stages"]["tasks"]["adapters"]}
    return TaskBuild(
        target=target,
        artifact=Artifact(path=folder / compiled["artifact"], backend=target.backend, quant=target.quant),
        reference=Artifact(path=Path(compiled["reference"]), backend=target.backend,
                           quant=info(target.backend).reference_level(target.quant)),
        base_dir=folder / "work" / "source-hf",
        base_key=next(iter(entries.values()))["base_key"],
        entries=entries,
    )
