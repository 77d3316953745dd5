"""What was built from what: source model, profile, versions, and every output with size and sha256."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from edgeft import __version__
from edgeft.atomic_io import write_json
from edgeft.bench.machine import package_versions

# What every build uses; each backend adds the packages it runs on (BackendInfo.tracked_packages).
TRACKED_PACKAGES = ("torch", "transformers", "tokenizers", "numpy")


def tracked() -> tuple[str, ...]:
    from edgeft.backends.registry import tracked_packages

    return TRACKED_PACKAGES + tracked_packages()


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path, root: Path | None = None) -> dict:
    name = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
    return {"path": name, "bytes": path.stat().st_size, "sha256": sha256(path)}


def source_entry(label: str, path: Path) -> dict:
    """A model source: its files hashed (a folder's weight, config and tokenizer files, or the one file)."""
    if path.is_file():
        return {"label": label, "path": str(path), "files": [file_entry(path)]}
    files = sorted(p for p in path.iterdir() if p.is_file())
    return {"label": label, "path": str(path), "files": [file_entry(p, path) for p in files]}


def write_manifest(out_dir: Path, *, source: dict, target: dict, outputs: list[Path], stages: dict) -> Path:
    manifest = {
        "edgeft": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_model": source,
        "target": target,
        "versions": {"edgeft": __version__, **package_versions(tracked())},
        "stages": stages,
        "outputs": [file_entry(p, out_dir) for p in outputs],
    }
    path = out_dir / "manifest.json"
    write_json(path, manifest)
    return path


def verify(out_dir: Path) -> list[str]:
    """Problems found re-hashing the outputs a manifest lists; empty when everything matches. A manifest
    that lists nothing, or a path outside its folder, is malformed: it would verify nothing, or hash
    files that are not the build's."""
    import json
    import os

    from edgeft.errors import ArtifactError

    path = out_dir / "manifest.json"
    if not out_dir.is_dir():
        raise ArtifactError("no such folder" if not out_dir.exists() else "a file, not a build folder", file=out_dir)
    if not path.is_file():
        raise ArtifactError("no manifest.json here: not a build folder, or a build that did not finish", file=out_dir)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"malformed manifest: not JSON ({exc})", file=path) from None
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ArtifactError("malformed manifest: `outputs` must list the build's files", file=path)
    problems = []
    for n, entry in enumerate(outputs):
        place = f"outputs[{n}]"
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str)):
            raise ArtifactError("malformed manifest: an output needs path, bytes and sha256", file=path, place=place)
        listed = Path(os.path.normpath(entry["path"]))  # as text: a symlinked output is still the build's
        if "\0" in entry["path"] or listed.is_absolute() or listed.parts[:1] == ("..",):
            raise ArtifactError(f"malformed manifest: {entry['path']!r} is outside the build folder", file=path, place=place)
        f = out_dir / listed
        if not f.is_file():
            problems.append(f"{f}: missing")
        elif f.stat().st_size != entry["bytes"]:
            problems.append(f"{f}: size {f.stat().st_size} != {entry['bytes']} recorded")
        elif sha256(f) != entry["sha256"]:
            problems.append(f"{f}: sha256 differs from the manifest")
    return problems
