"""The ONNX backend: onnxruntime-genai's model builder as exporter, onnxruntime as runtime.

An artifact is a folder an app ships whole: model.onnx, its external data, genai_config.json,
the tokenizer files and the chat template. It runs in onnxruntime-genai (what its mobile
SDKs load) and its graph loads in a plain onnxruntime.InferenceSession (what we time).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.backends.base import Artifact
from edgeft.backends.registry import entry
from edgeft.errors import BackendUnavailable

if TYPE_CHECKING:
    from edgeft.backends.onnx_runner import OnnxRunner
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


class OnnxBackend:
    name = "onnx"
    quant_levels = entry("onnx").quant_levels

    def check(self) -> None:
        import importlib.util

        missing = [pkg for module, pkg in REQUIRED.items() if importlib.util.find_spec(module) is None]
        if missing:
            raise BackendUnavailable(f"{', '.join(missing)} not installed (run `make setup`)")

    def details(self) -> dict[str, object]:
        """Versions and execution providers, for `edgeft doctor`."""
        import onnxruntime as ort

        from edgeft.bench.machine import package_versions

        info: dict[str, object] = {
            "versions": package_versions(("onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir")),
            "execution_providers": ort.get_available_providers(),
        }
        return info

    def compile(self, model_dir: Path, target: "Target", out_dir: Path, *, intermediate: Path | None = None) -> Artifact:
        """HF folder -> `<out_dir>/model-onnx-<quant>/`. `intermediate` is unused: the builder quantizes
        from the HF weights directly in one pass."""
        from edgeft.backends.onnx_export import export

        self.check()
        folder = export(model_dir, artifact_dir(out_dir, target.quant), target.quant, target.onnx)
        files = tuple(sorted(p for p in folder.rglob("*") if p.is_file()))
        return Artifact(path=folder, kind="onnx", files=files)

    def load(self, artifact: Artifact, target: "Target") -> "OnnxRunner":
        from edgeft.backends.onnx_runner import OnnxRunner

        self.check()
        return OnnxRunner(artifact.path, threads=target.resolved_threads(), context=target.bench.context)
