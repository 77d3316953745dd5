"""Wall time and peak memory of `edgeft build --target gguf` on the default model, cold and warm.

Cold: a fresh output folder, so every stage runs (dequantize the default GGUF into an HF
folder, convert, quantize, export check, bench). Warm: the same command again on that folder,
so finished stages are reused. The build runs as `python -m edgeft.cli build ...` in a child
process; peak RSS is taken two ways:

- tree peak: the largest sum of RSS over the child and all its descendants (the bench worker
  is a grandchild), sampled with psutil every --interval seconds;
- largest single process: the kernel's own peak (ru_maxrss via /usr/bin/time -v, which covers
  the child and every descendant it waited for), when /usr/bin/time exists.

JSON goes to --out first, then a table is printed.

    PYTHONPATH=. .venv/bin/python benchmarks/build_wall_time.py [--repeats 1] [--no-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_info import DEFAULT_RESULTS, REPO, BenchError, busy_line, cache_dir, environment_at_end, run_header, table  # noqa: E402

GNU_TIME = Path("/usr/bin/time")
OK_EXIT_CODES = (0, 1)  # 1: the build finished but a budget line failed; still a complete build


def tree_rss(proc) -> int:
    """Sum of RSS in bytes over a process and all its descendants alive right now."""
    import psutil

    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in members:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def parse_gnu_time(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key == "Maximum resident set size (kbytes)":
            out["max_single_process_rss_mb"] = int(value) / 1024.0
        elif key == "User time (seconds)":
            out["user_s"] = float(value)
        elif key == "System time (seconds)":
            out["system_s"] = float(value)
    return out


def run_build(cmd: list[str], log: Path, interval: float) -> dict:
    import psutil

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="edgeft-walltime-") as tmp:
        time_file = Path(tmp) / "time.txt"
        full = [str(GNU_TIME), "-v", "-o", str(time_file), *cmd] if GNU_TIME.is_file() else cmd
        peak = 0
        with open(log, "wb") as fh:
            start = time.perf_counter()
            child = subprocess.Popen(full, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            proc = psutil.Process(child.pid)
            while child.poll() is None:
                peak = max(peak, tree_rss(proc))
                time.sleep(interval)
            wall = time.perf_counter() - start
        gnu = parse_gnu_time(time_file.read_text()) if time_file.is_file() else {}
    if child.returncode not in OK_EXIT_CODES:
        tail = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{log}: the build failed (exit {child.returncode}): {tail}")
    return {"wall_s": wall, "tree_peak_rss_mb": peak / 2**20, "exit_code": child.returncode, **gnu}


def stage_seconds(out_dir: Path) -> dict:
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        return {}
    stages = json.loads(manifest.read_text()).get("stages", {})
    out: dict = {}
    for name, value in stages.items():
        if isinstance(value, dict):
            out[name] = {"seconds": value.get("seconds"), "reused": value.get("reused")}
        else:
            out[name] = value  # total_seconds
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_RESULTS / "build_wall_time.json"), help="JSON result path")
    p.add_argument("--cache", default=None, help="where the build output folder goes (default ~/.cache/edgeft-bench)")
    p.add_argument("--target", default="gguf")
    p.add_argument("--model", default="default")
    p.add_argument("--repeats", type=int, default=1, help="cold+warm pairs to run (medians reported)")
    p.add_argument("--no-bench", action="store_true", help="pass --no-bench to the build (conversion only)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between RSS samples")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.interval <= 0:
        p.error("--repeats must be at least 1 and --interval positive")
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("build_wall_time: error: psutil is not installed (it is an edgeft dependency: pip install -e .)", file=sys.stderr)
        return 2

    from edgeft.atomic_io import write_json

    header = run_header()
    work = cache_dir(args.cache) / "build-wall-time"
    work.mkdir(parents=True, exist_ok=True)
    build_dir = work / "out"
    cmd = [sys.executable, "-m", "edgeft.cli", "--quiet", "build", "--model", args.model, "--target", args.target, "--out", str(build_dir)]
    if args.no_bench:
        cmd.append("--no-bench")
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    try:
        for i in range(args.repeats):
            for kind in ("cold", "warm"):
                if kind == "cold":
                    shutil.rmtree(build_dir, ignore_errors=True)
                print(f"[{i + 1}/{args.repeats}] {kind} build ...", file=sys.stderr, flush=True)
                run = run_build(cmd, work / f"{kind}-{i}.log", args.interval)
                run["stages"] = stage_seconds(build_dir)
                runs[kind].append(run)
    except BenchError as exc:
        print(f"build_wall_time: error: {exc}", file=sys.stderr)
        return 2
    summary = {}
    for kind, rs in runs.items():
        summary[kind] = {
            key: statistics.median([r[key] for r in rs]) for key in ("wall_s", "tree_peak_rss_mb", "max_single_process_rss_mb", "user_s", "system_s")
            if all(key in r for r in rs)
        }
    result = {
        "benchmark": "build_wall_time",
        "environment": environment_at_end(header),
        "command": cmd,
        "settings": {"repeats": args.repeats, "interval_s": args.interval, "gnu_time": GNU_TIME.is_file()},
        "runs": runs,
        "summary": summary,
    }
    out = Path(args.out)
    write_json(out, result)

    rows = []
    for kind in ("cold", "warm"):
        s = summary[kind]
        stages = runs[kind][-1]["stages"]
        stage_text = ", ".join(
            f"{k} {v['seconds']}s{' (reused)' if v.get('reused') else ''}" for k, v in stages.items() if isinstance(v, dict) and v.get("seconds") is not None
        )
        rows.append([kind, s["wall_s"], s["tree_peak_rss_mb"], s.get("max_single_process_rss_mb"), s.get("user_s"), stage_text])
    print(table(rows, ["build", "wall s", "tree peak RSS MB", "max 1-proc RSS MB", "user CPU s", "stages (last run)"]))
    env = result["environment"]
    print(f"\n{' '.join(cmd[1:])}; repeats {args.repeats}; {busy_line(env)}")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
