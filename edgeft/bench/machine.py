"""What machine a benchmark ran on, so two bench files can be told apart."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# The instruction sets that decide which kernels a runtime can run, as /proc/cpuinfo names them.
SIMD_FLAGS = ("sse4_2", "avx", "f16c", "fma", "bmi2", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
              "avx512dq", "avx512cd", "avx512vbmi", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_int8", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The instruction-set flags the first CPU in /proc/cpuinfo advertises."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_simd_flags() -> list[str]:
    flags = cpu_flags()
    return [f for f in SIMD_FLAGS if f in flags]


def governor() -> str | None:
    """The CPU frequency governor (performance, powersave, ...) where the OS exposes it; None in most VMs."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def describe(threads: int) -> dict[str, object]:
    return {
        "governor": governor(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_simd_flags(),
        "cores": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


class OtherLoad:
    """How many cores other processes kept busy while a block ran: the machine's busy time in
    /proc/stat (steal included: a hypervisor's other guests slow us too) less this process's and its
    waited-for children's CPU time, over the wall time. `cores` is None where /proc/stat is missing.

    Why: a latency measured while something else runs is the machine's, not the model's, and a
    decision taken on it (pruning a student) must say so."""

    def __enter__(self) -> "OtherLoad":
        self.cores: float | None = None
        self._start = (time.monotonic(), _machine_busy_s(), _own_cpu_s())
        return self

    def __exit__(self, *exc) -> None:
        t0, busy0, own0 = self._start
        busy1, wall = _machine_busy_s(), time.monotonic() - t0
        if busy0 is None or busy1 is None or wall <= 0:
            return
        self.cores = max(0.0, (busy1 - busy0) - (_own_cpu_s() - own0)) / wall


def _machine_busy_s() -> float | None:
    """Seconds all CPUs spent neither idle nor waiting on I/O since boot (the "cpu" line of /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
