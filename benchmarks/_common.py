"""What every benchmark script records beside its numbers: machine, load, versions, git revision."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The library noise `edgeft` itself mutes (torchao's "Failed to load" CUDA kernels, torch's
# deprecations): a script's output is its figures.
from edgeft.progress import mute_import_noise  # noqa: E402

mute_import_noise()


def context() -> dict:
    """Load average is recorded because these scripts may run on a shared machine: numbers taken
    with a load above the core count are noisy and say so."""
    from edgeft.bench.machine import cpu_model, package_versions

    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    load = os.getloadavg()
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": rev,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "under_load": load[0] > (os.cpu_count() or 1) * 0.5,
        "versions": package_versions(("llama-cpp-python", "gguf", "torch", "transformers", "numpy")),
    }


def write(path: Path, data: dict) -> None:
    from edgeft.atomic_io import write_json

    write_json(path, data)
    print(f"wrote {path}")
