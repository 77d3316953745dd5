"""Wires the stages for `build`: source -> HF folder -> compile -> export check -> bench -> manifest.

A finished stage is reused when its inputs' hashes match what it recorded last time."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgeft import models
from edgeft.atomic_io import write_json, write_text
from edgeft.backends.registry import get_backend
from edgeft.config import Target, to_dict
from edgeft.manifest import source_entry, write_manifest
from edgeft.progress import status


@dataclass
class BuildResult:
    out_dir: Path
    artifact: Path
    bench: dict | None
    manifest: Path


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _reusable(stage_dir: Path, key: str) -> bool:
    stamp = stage_dir / ".stage.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("key") == key


def _stamp(stage_dir: Path, key: str) -> None:
    write_json(stage_dir / ".stage.json", {"key": key})


def source_hash(source: models.ModelSource) -> str:
    entry = source_entry(source.label, source.path)
    return _key([(f["path"], f["sha256"]) for f in entry["files"]])


def prepare_source(source: models.ModelSource, src_key: str, work: Path) -> tuple[Path, dict]:
    """The source as an HF folder; a GGUF source is dequantized once and reused while unchanged."""
    if source.kind == "hf":
        return source.path, {"reused": True, "kind": "hf", "key": src_key}
    hf_dir = work / "source-hf"
    key = _key("source-hf", src_key)
    if _reusable(hf_dir, key):
        return hf_dir, {"reused": True, "kind": "gguf-dequantized", "key": key}
    status(f"dequantizing {source.label} into a Hugging Face folder ...")
    models.materialize_hf(source, hf_dir)
    _stamp(hf_dir, key)
    return hf_dir, {"reused": False, "kind": "gguf-dequantized", "key": key}


def build(model: str, target: Target, out_dir: Path, *, run_bench: bool = True) -> BuildResult:
    started = time.perf_counter()
    source = models.resolve(model)
    backend = get_backend(target.backend)
    backend.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    stages: dict[str, dict] = {}

    t = time.perf_counter()
    src_key = source_hash(source)
    hf_dir, stages["source"] = prepare_source(source, src_key, work)
    stages["source"]["seconds"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    status(f"compiling for {target.name} ({target.backend}, {target.quant}) ...")
    extra: dict = {}
    if hasattr(backend, "intermediate_dtype"):
        # Backends that quantize from an unquantized file (GGUF) get it converted once and reused
        # across levels and rebuilds while the source is unchanged.
        dtype = backend.intermediate_dtype(target.quant)
        if dtype != target.quant:
            intermediate = work / f"model-{dtype}.gguf"
            key = _key("convert", src_key, dtype)
            if not _reusable(work / f"convert-{dtype}", key):
                backend.convert(hf_dir, intermediate, dtype, name=source.name)
                _stamp(work / f"convert-{dtype}", key)
            extra["intermediate"] = intermediate
        extra["name"] = source.name
    artifact = backend.compile(hf_dir, target, out_dir, **extra)
    stages["compile"] = {"seconds": round(time.perf_counter() - t, 2), "artifact": artifact.path.name}

    t = time.perf_counter()
    runner = backend.load(artifact, target)
    try:
        from edgeft.export_check import check_outputs, check_tokenizer_parity

        stages["export_check"] = check_tokenizer_parity(hf_dir, runner)
        stages["export_check"]["outputs"] = check_outputs(hf_dir, runner, target.quant)
    finally:
        runner.close()
    stages["export_check"]["seconds"] = round(time.perf_counter() - t, 2)

    write_text(out_dir / "target.toml", target.to_toml())
    outputs = [*artifact.package_files(), out_dir / "target.toml"]  # a folder artifact lists every file
    result = None
    if run_bench:
        from edgeft.bench.run import bench

        t = time.perf_counter()
        status(f"benchmarking ({target.bench.warmup} warm-up + {target.bench.runs} runs) ...")
        result = bench(artifact, target)
        write_json(out_dir / "bench.json", result)
        outputs.append(out_dir / "bench.json")
        stages["bench"] = {"seconds": round(time.perf_counter() - t, 2)}
    else:
        (out_dir / "bench.json").unlink(missing_ok=True)  # it described an earlier artifact
    stages["total_seconds"] = round(time.perf_counter() - started, 2)
    manifest = write_manifest(
        out_dir,
        source=source_entry(source.label, source.path),
        target={"name": target.name, "source": target.source, **to_dict(target)},
        outputs=outputs,
        stages=stages,
    )
    return BuildResult(out_dir=out_dir, artifact=artifact.path, bench=result, manifest=manifest)


def clean_work(out_dir: Path) -> None:
    shutil.rmtree(out_dir / "work", ignore_errors=True)
