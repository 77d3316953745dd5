"""Shared by the distillation benchmarks: where the data comes from, and what machine ran them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from edgeft.bench.machine import describe, package_versions


def environment() -> dict:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = None
    return {
        "machine": describe(os.cpu_count() or 1),
        "load_average_at_start": os.getloadavg(),  # > cores: other work shared the CPU, timings are noisy
        "versions": package_versions(("torch", "transformers", "peft", "bitsandbytes", "torchao", "edgeft")),
        "git_revision": rev,
    }


def data_for(data: str | None, out: Path):
    """A prepared folder as it is; a raw file or nothing (= the default prompt set, answered by
    the teacher) through the data stage."""
    from edgeft.distill import open_data

    if data is not None:
        return open_data(Path(data), "default", out)
    from edgeft.data.prepare import prepare  # the data stage (edgeft.data)

    return prepare(None, "default", out / "data")
