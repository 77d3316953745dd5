"""What every benchmark result records about the run: when, where, with what, and how busy the machine was.

Shared by the scripts in this folder (not part of the edgeft package). Timings taken on a
loaded machine are noisy, so each result carries the load average before and after the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO / "benchmarks" / "results"
TRACKED = ("edgeft", "torch", "transformers", "tokenizers", "gguf", "llama-cpp-python", "numpy", "sentencepiece", "psutil")


class BenchError(Exception):
    """A benchmark cannot run here; the script prints this one line and exits 2."""


def git_revision() -> dict[str, object]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None, "branch": git("rev-parse", "--abbrev-ref", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_header(threads: int | None = None) -> dict[str, object]:
    """Machine, versions and git revision, taken at the start of a run."""
    from edgeft.bench.machine import describe, package_versions

    machine = describe(threads or 0)
    try:
        import psutil

        machine["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "load_average_start": load_average(),
        "versions": package_versions(TRACKED),
        "git": git_revision(),
        "argv": sys.argv,
    }


def loaded(header: dict[str, object], end_load: list[float]) -> bool:
    """True when the 1-minute load average exceeded a quarter of the cores at the start or the end."""
    cores = (header.get("machine") or {}).get("cores") or 1  # type: ignore[union-attr]
    loads = [header["load_average_start"][0] if header.get("load_average_start") else 0.0]  # type: ignore[index]
    if end_load:
        loads.append(end_load[0])
    return max(loads) > 0.25 * cores


def cache_dir(explicit: str | None) -> Path:
    """Where fetched and built files live between runs: never inside the repository."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeft-bench"


def table(rows: list[list[object]], header: list[str]) -> str:
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if value is None:
        return "-"
    return str(value)
