"""The ONNX backend's work: onnxruntime-genai's model builder as exporter, onnxruntime as runtime.

An artifact is a folder an app ships whole: model.onnx, its external data, genai_config.json,
the tokenizer files and the chat template. It runs in onnxruntime-genai (what its mobile
SDKs load) and its graph loads in a plain onnxruntime.InferenceSession (what we time).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.backends.base import Artifact
from edgeft.backends.marker import marker, read_marker
from edgeft.errors import ArtifactError, BackendUnavailable

if TYPE_CHECKING:
    from edgeft.backends.onnx.runner import OnnxRunner
    from edgeft.config import Target

# Import name -> what to install, for check(); the builder needs torch, transformers and onnx_ir.
REQUIRED = {
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxruntime_genai": "onnxruntime-genai",
    "onnx_ir": "onnx-ir",
}


def artifact_dir(out_dir: Path, quant: str) -> Path:
    return out_dir / f"model-onnx-{quant}"


def _importance_for(artifact: Artifact, importance: Path | None) -> Path | None:
    """The importance file to export `artifact` again with (LoRA inputs added), so that it is rounded as it was:
    None when its marker says it was not weighed. It must be the file it was weighed by (the marker keeps
    its digest, not its path); any other would ship a base unlike the one measured, so that is refused."""
    recorded = (read_marker(artifact.path) or {}).get("importance")
    if not recorded:
        return None
    from edgeft.manifest import sha256

    if importance is None or not Path(importance).is_file() or sha256(importance) != recorded.get("sha256"):
        raise ArtifactError(f"its int4 weights were rounded weighing {recorded.get('name', 'an importance file')}, which "
                            "this build does not have; build the base and its task adapters again in one build",
                            file=artifact.path)
    return Path(importance)


class OnnxBackend:
    name = "onnx"

    def check(self) -> None:
        import importlib.util

        missing = [pkg for module, pkg in REQUIRED.items() if importlib.util.find_spec(module) is None]
        if missing:
            raise BackendUnavailable(f"{', '.join(missing)} not installed (run `make setup`)")

    def details(self) -> dict[str, object]:
        """Versions and execution providers, for `edgeft doctor`."""
        import onnxruntime as ort

        from edgeft.bench.machine import package_versions

        return {
            "versions": package_versions(("onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir")),
            "execution_providers": ort.get_available_providers(),
            "ok": True,
        }

    def _export(self, model_dir: Path, target: "Target", folder: Path, *, adapter_template: Path | None = None,
                importance: Path | None = None) -> Artifact:
        from edgeft.backends.onnx.export import export

        self.check()
        export(model_dir, folder, target.quant, target.options, marker=marker(self.name, target.quant),
               adapter_template=adapter_template, importance=importance)
        files = tuple(sorted(p for p in folder.rglob("*") if p.is_file()))
        return Artifact(path=folder, backend=self.name, quant=target.quant, files=files)

    def reference(self, model_dir: Path, target: "Target", out_dir: Path, *, name: str) -> Artifact:
        """The fp32 export, `<out_dir>/model-onnx-fp32/`: int8 and int4 are measured against it."""
        return self._export(model_dir, target, artifact_dir(out_dir, target.quant))

    def compile(self, model_dir: Path, target: "Target", out_dir: Path, *, reference: Artifact, name: str,
                importance: Path | None = None) -> Artifact:
        """`<out_dir>/model-onnx-<quant>/`: a copy of the reference at its own level; else the builder
        quantizes from the HF weights directly in one pass (it has no fp32-graph input), and at int4
        `importance` (given where `uses_importance` says so) weighs the rounding again."""
        folder = artifact_dir(out_dir, target.quant)
        if target.quant != reference.quant:
            return self._export(model_dir, target, folder, importance=importance)
        import shutil

        from edgeft.atomic_io import atomic_dir

        with atomic_dir(folder) as tmp:
            shutil.copytree(reference.path, tmp, dirs_exist_ok=True)
        files = tuple(sorted(p for p in folder.rglob("*") if p.is_file()))
        return Artifact(path=folder, backend=self.name, quant=target.quant, files=files)

    def adapter_base(self, base: Artifact, reference: Artifact, model_dir: Path, adapter_dirs: "Sequence[Path]",
                     target: "Target", *, importance: Path | None = None) -> tuple[Artifact, Artifact]:
        """The base and its reference exported again with LoRA inputs for every projection the adapters
        train (adapters.py); a folder that already takes them all is kept as it is. `importance` is the
        file the base's int4 rounding was weighed by, if it was: the new export is rounded the same way."""
        import tempfile

        from edgeft.backends.onnx import adapters

        lora = [folder for folder in adapter_dirs if adapters.peft_type(folder) != "PREFIX_TUNING"]
        if not lora:  # prefixes need no graph change
            return base, reference
        needed = set()
        for folder in lora:
            needed.update(adapters.peft_tensors(folder))
        # each folder to export again, with the importance file it is rounded by: all checked before either is written
        again = {artifact.path: _importance_for(artifact, importance) for artifact in (reference, base)
                 if not needed <= set(adapters.lora_inputs(artifact.path / adapters.MODEL_FILE))}
        out = []
        with tempfile.TemporaryDirectory(prefix="edgeft-lora-template-") as tmp:
            template = None
            for artifact in (reference, base):
                if artifact.path not in again:
                    out.append(artifact)
                    continue
                if template is None:
                    template = adapters.write_template(model_dir, adapters.target_modules(lora), Path(tmp) / "template")
                out.append(self._export(model_dir, target.with_overrides(quant=artifact.quant), artifact.path,
                                        adapter_template=template, importance=again[artifact.path]))
        return out[1], out[0]

    def export_adapter(self, adapter_dir: Path, base_dir: Path, out_path: Path, *, base: Artifact) -> Path:
        """`<task>.onnx_adapter`: the values of the base graph's LoRA inputs; or, for a prefix-tuned task,
        `<task>.prefix.safetensors`: its initial KV cache. Either records the base's fingerprint."""
        from edgeft.backends.onnx import adapters

        if adapters.peft_type(adapter_dir) == "PREFIX_TUNING":
            return adapters.export_prefix(adapter_dir, base_dir, base.path, out_path)
        return adapters.export(adapter_dir, base.path, out_path)

    def check_adapter(self, adapter: Path, base: Artifact) -> None:
        from edgeft.backends.onnx import adapters

        if adapters.is_prefix_file(adapter):
            adapters.check_prefix_base(adapter, base.path)
        else:
            adapters.check_base(adapter, base.path)

    def adapter_positions(self, adapter: Path) -> int:
        from edgeft.backends.onnx import adapters

        return adapters.prefix_positions(adapter)

    def load(self, artifact: Artifact, target: "Target") -> "OnnxRunner":
        from edgeft.backends.onnx.runner import OnnxRunner

        self.check()
        return OnnxRunner(artifact.path, threads=target.resolved_threads(), context=target.bench.context)
