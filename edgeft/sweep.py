"""One sweep over quantization levels, shared by `compare` and `--quant auto`: every level of a
backend compiled from one unquantized reference (made once per source), then benchmarked against
that reference and the source model on the same tokens.

`compare` benchmarks every level; `--quant auto` benchmarks from the smallest file upward and
stops at the first that meets every budget."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeft.atomic_io import write_json
from edgeft.backends.base import Artifact, Backend
from edgeft.backends.registry import info
from edgeft.config import Target
from edgeft.progress import status
from edgeft.stages import key, reusable, stamp


@dataclass
class Level:
    """One compiled level: the artifact, the reference it is measured against, and its bench result."""

    artifact: Artifact
    reference: Artifact
    result: dict | None = None


def reference(backend: Backend, hf_dir: Path, target: Target, work: Path, src_key: str, name: str) -> Artifact:
    """The backend's unquantized export for `target.quant`, made once per source and options and reused."""
    from edgeft.config import options_dict

    level = info(backend.name).reference_level(target.quant)
    ref_target = target.with_overrides(quant=level)
    stage = work / f"reference-{backend.name}-{level}"
    stage_key = key("reference", src_key, backend.name, level, name, options_dict(target))
    recorded = stage / "artifact.json"
    if reusable(stage, stage_key) and recorded.is_file():
        artifact = Artifact.from_json(json.loads(recorded.read_text()))
        if artifact.path.exists():
            return artifact
    artifact = backend.reference(hf_dir, ref_target, work, name=name)
    write_json(recorded, {**artifact.to_json(), "files": [str(p) for p in artifact.package_files()]})
    stamp(stage, stage_key)
    return artifact


def compile_level(backend: Backend, hf_dir: Path, target: Target, out_dir: Path, work: Path, src_key: str,
                  name: str, importance: Path | None = None) -> Level:
    """One level of one backend, and the reference it is measured against. `importance` (an
    `edgeft.importance` file of `hf_dir`) goes to the backend where its quantizer at this level uses it."""
    ref = reference(backend, hf_dir, target, work, src_key, name)
    if importance is not None and not weighs_importance(backend.name, target):
        importance = None
    return Level(backend.compile(hf_dir, target, out_dir, reference=ref, name=name, importance=importance), ref)


def weighs_importance(backend: str, target: Target) -> bool:
    """Whether `backend`'s quantizer weighs its rounding by an importance file at `target`'s level and options."""
    return info(backend).uses_importance(target.options, target.quant)


def compile_levels(backend: Backend, hf_dir: Path, target: Target, levels: list[str], dir_for: Callable[[str], Path],
                   work: Path, src_key: str, name: str, what: str, importance: Path | None = None) -> list[Level]:
    compiled = []
    for level in levels:
        status(f"{what}: compiling {backend.name} {level} ...")
        compiled.append(compile_level(backend, hf_dir, target.with_overrides(quant=level), dir_for(level), work, src_key,
                                      name, importance))
    return compiled


def bench_levels(levels: list[Level], target: Target, *, eval_data: Path | None, source: Path | None, what: str,
                 stop_at_pass: bool = False, source_file: Artifact | None = None) -> list[Level]:
    """Bench each level in order (the caller's); with `stop_at_pass`, stop after the first that meets
    every budget. Returns the levels benchmarked. A level failing a timing line is timed again
    (`run.settled_latency`): which level is named smallest must not depend on a busy moment."""
    from edgeft.bench.budgets import LATENCY_TRIES
    from edgeft.bench.run import bench

    done = []
    for lv in levels:
        status(f"{what}: benchmarking {lv.artifact.backend} {lv.artifact.quant} ({lv.artifact.package_bytes() / 1e6:.1f} MB) ...")
        lv.result = bench(lv.artifact, target.with_overrides(quant=lv.artifact.quant), reference=lv.reference,
                          eval_data=eval_data, source=source, latency_tries=LATENCY_TRIES, source_file=source_file)
        done.append(lv)
        if stop_at_pass and lv.result["pass"]:
            break
    return done


def quantize_to_fit(backend: Backend, hf_dir: Path, target: Target, out_dir: Path, work: Path, src_key: str, name: str,
                    eval_data: Path | None, source: Path | None, importance: Path | None = None,
                    source_file: Artifact | None = None) -> tuple[Level, dict]:
    """`--quant auto`: every candidate level from the one reference, benchmarked from the smallest file
    upward; the first that meets every budget (latency and quality included) is kept, else the largest.
    Returns the kept level and what was tried and why each was rejected."""
    from edgeft.errors import ConfigError

    candidates = list(info(backend.name).auto_levels)
    if len(candidates) < 2:
        raise ConfigError([("quant", f"'auto' needs more than one level; backend {backend.name} has {len(candidates)}")],
                          file=target.source)
    levels = compile_levels(backend, hf_dir, target, candidates, lambda _: out_dir, work, src_key, name, "quant auto",
                            importance)
    levels.sort(key=lambda lv: lv.artifact.package_bytes())
    tried = bench_levels(levels, target, eval_data=eval_data, source=source, what="quant auto", stop_at_pass=True,
                         source_file=source_file)
    kept, verdict = keep_level(tried)
    sizes = {lv.artifact.path: lv.artifact.package_bytes() for lv in levels}
    for lv in levels:  # only the kept level stays in the output folder
        if lv.artifact.path != kept.artifact.path:
            remove(lv.artifact)
    summary = [{"quant": lv.artifact.quant, "package_bytes": sizes[lv.artifact.path],
                "pass": lv.result["pass"],
                "rejected_because": [f"{b['budget']} = {b['value']:.4g} > {b['limit']:g}" for b in lv.result["budget"] if b["status"] == "FAIL"]}
               for lv in tried]
    return kept, {"order": "smallest file first", "tried": summary, "kept": kept.artifact.path.name, "verdict": verdict}


def keep_level(tried: list[Level]) -> tuple[Level, str]:
    """The level `--quant auto` ships from its benched levels (smallest file first) and why.

    The first that meets every budget. Failing that, the one closest to the source among those the
    device can hold (size, latency and memory lines met): a file that does not fit is no answer, and a
    quality line missed by less is the better of two misses. When none fits the device either, the
    largest, the best the source can be at any level."""
    from edgeft.bench.budgets import device_failures

    for lv in tried:
        if lv.result["pass"]:
            return lv, "met every budget"
    fits = [lv for lv in tried if not device_failures(lv.result["budget"])]
    if not fits:
        return tried[-1], "no level met every budget, nor the size, latency and memory lines alone; kept the largest tried"

    def distance(lv: Level) -> tuple[float, int]:
        m = lv.result["metrics"]
        for metric in ("ppl_vs_source_pct", "ppl_increase_pct"):
            if m.get(metric) is not None:
                return (m[metric], -tried.index(lv))
        return (float("inf"), -tried.index(lv))  # quality not measured: the largest that fits

    kept = min(fits, key=distance)
    return kept, (f"no level met every budget; kept {kept.artifact.quant}, the closest to the source of the levels that "
                  "meet the size, latency and memory lines")


def remove(artifact: Artifact) -> None:
    if artifact.path.is_dir():
        shutil.rmtree(artifact.path, ignore_errors=True)
    else:
        artifact.path.unlink(missing_ok=True)


def compile_one(backend: Backend, model_dir: Path, target: Target, out_dir: Path) -> Artifact:
    """One level with nothing reused: its reference made in `out_dir/work` (for scripts and tests)."""
    from edgeft.stages import key as stage_key

    return compile_level(backend, model_dir, target, out_dir, out_dir / "work", stage_key("one", str(model_dir)),
                         model_dir.name).artifact
