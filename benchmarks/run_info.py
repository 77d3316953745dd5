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


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds every process on the machine has been busy, CPU seconds this process and its
    waited-for children used): their deltas over a run separate other people's work from ours."""
    import psutil

    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    own = sum(os.times()[:4])  # user, system, children's user, children's system
    return busy, own


def other_cpu_share(start: tuple[float, float], end: tuple[float, float], wall_s: float, cores: int) -> float:
    """The fraction of the machine's CPU capacity that other processes used during the run."""
    other = (end[0] - start[0]) - (end[1] - start[1])
    return max(0.0, other) / max(wall_s * cores, 1e-9)


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
        "start": {"monotonic": time.monotonic(), "cpu_seconds": cpu_seconds()},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "load_average_start": load_average(),
        "versions": package_versions(TRACKED),
        "git": git_revision(),
        "argv": sys.argv,
    }


def environment_at_end(header: dict[str, object]) -> dict[str, object]:
    """The header plus how busy the machine was: the end load average (which counts the run's
    own work, so a CPU-bound benchmark always ends near its thread count) and the share of CPU
    that other processes took meanwhile, which does not. `loaded`: that share above a quarter of
    the machine; without it, the start load above a quarter of the cores (a start load also
    remembers the minute before the run, such as the previous benchmark)."""
    cores = int((header.get("machine") or {}).get("cores") or 1)  # type: ignore[union-attr]
    start = header.get("start")
    share = None
    if isinstance(start, dict):
        share = round(other_cpu_share(tuple(start["cpu_seconds"]), cpu_seconds(), time.monotonic() - start["monotonic"], cores), 3)
    start_load = header["load_average_start"][0] if header.get("load_average_start") else 0.0  # type: ignore[index]
    is_loaded = share > 0.25 if share is not None else start_load > 0.25 * cores
    kept = {k: v for k, v in header.items() if k != "start"}
    return {**kept, "load_average_end": load_average(), "other_cpu_share": share, "loaded": is_loaded}


def busy_line(env: dict[str, object]) -> str:
    """The end of a benchmark's printout: how busy the machine was, and whether that spoils the timings."""
    share = env.get("other_cpu_share")
    other = "" if share is None else f", other processes {share:.0%} of the CPU"
    return (f"load average {env['load_average_start']} -> {env['load_average_end']}{other}"
            f"{' (LOADED machine: timings are noisy)' if env['loaded'] else ''}")


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
