"""What every stage shares: input hashes and stamps (a finished stage is reused while its inputs'
hashes match what it recorded), and the source as an HF folder, checked against the backend."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgeft import models
from edgeft.atomic_io import write_json
from edgeft.backends.registry import info
from edgeft.manifest import source_entry
from edgeft.progress import status


def key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def reusable(stage_dir: Path, stage_key: str) -> bool:
    stamp = stage_dir / ".stage.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("key") == stage_key


def stamp(stage_dir: Path, stage_key: str) -> None:
    write_json(stage_dir / ".stage.json", {"key": stage_key})


def source_hash(source: models.ModelSource) -> str:
    entry = source_entry(source.label, source.path)
    return key([(f["path"], f["sha256"]) for f in entry["files"]])


def accepts(backend: str) -> models.Accepts:
    """For `models.resolve`: None when `backend` can export an architecture, else why not."""
    spec = info(backend)

    def why(arch: str) -> str | None:
        if spec.accepts(arch):
            return None
        supported = ", ".join(spec.architectures()) if spec.architectures else "any"
        return f"architecture {arch} is not supported by the {backend} backend (supported: {supported})"

    return why


def resolve_for(model: str, backends: list[str]) -> models.ModelSource:
    """The model source, refused up front when any of `backends` cannot export its architecture."""
    checks = [accepts(b) for b in backends]
    return models.resolve(model, accepts=lambda arch: next((w for w in (c(arch) for c in checks) if w), None))


def prepare_source(source: models.ModelSource, src_key: str, work: Path) -> tuple[Path, dict]:
    """The source as an HF folder; a source file (GGUF, a source format) is dequantized once and reused while unchanged."""
    if source.kind == "hf":
        return source.path, {"reused": True, "kind": "hf", "key": src_key}
    hf_dir = work / "source-hf"
    stage_key = key("source-hf", src_key)
    if reusable(hf_dir, stage_key):
        return hf_dir, {"reused": True, "kind": f"{source.kind}-dequantized", "key": stage_key}
    status(f"dequantizing {source.label} into a Hugging Face folder ...")
    models.materialize_hf(source, hf_dir)
    stamp(hf_dir, stage_key)
    return hf_dir, {"reused": False, "kind": f"{source.kind}-dequantized", "key": stage_key}


