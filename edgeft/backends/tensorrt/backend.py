"""The TensorRT backend's work. Host half (runs anywhere): `export` writes the TensorRT-ready graph,
`quantize` makes weight-only int8/int4 with ModelOpt. Device half (an NVIDIA GPU with TensorRT):
`engine` builds the engine and runs it. `check` says in one line which of the two is missing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.backends.base import Artifact
from edgeft.backends.marker import marker
from edgeft.errors import BackendUnavailable

if TYPE_CHECKING:
    from edgeft.backends.tensorrt.engine import EngineRunner
    from edgeft.config import Target

CALIBRATION_TOKENS = 64  # tokens per calibration sequence


def artifact_dir(out_dir: Path, quant: str) -> Path:
    return out_dir / f"model-tensorrt-{quant}"


def missing() -> list[str]:
    """What this machine lacks to build and run engines (empty when nothing)."""
    import importlib.util

    reasons = []
    if importlib.util.find_spec("tensorrt") is None:
        reasons.append("the tensorrt module is not installed (`pip install '.[tensorrt]'` on the machine with the GPU; it "
                       "takes the wheels from NVIDIA's package index, where PyPI has only stubs)")
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        reasons.insert(0, "no NVIDIA GPU is visible (CUDA reports none)")
    return reasons


def calibration_ids(folder: Path, records: int) -> list[list[int]]:
    """`records` sequences of CALIBRATION_TOKENS tokens from the shipped default prompts: not the
    bench's evaluation text, so a calibrated level is not scored on what it was calibrated on."""
    import json
    from importlib import resources

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = "\n".join(json.loads(line)["input"] for line in
                     resources.files("edgeft.data").joinpath("default_prompts.jsonl").read_text(encoding="utf-8").splitlines()
                     if line.strip())
    ids = tok.encode(text, add_special_tokens=False).ids
    n = CALIBRATION_TOKENS
    return [ids[i * n:(i + 1) * n] for i in range(min(records, len(ids) // n))]


class TensorRTBackend:
    name = "tensorrt"

    def check(self) -> None:
        reasons = missing()
        if reasons:
            raise BackendUnavailable("TensorRT engines need an NVIDIA GPU and TensorRT: " + "; ".join(reasons))

    def details(self) -> dict[str, object]:
        import tensorrt as trt
        import torch

        return {"versions": {"tensorrt": trt.__version__, "torch": torch.__version__}, "gpu": torch.cuda.get_device_name(0),
                "ok": True}

    def _artifact(self, folder: Path, quant: str) -> Artifact:
        return Artifact(path=folder, backend=self.name, quant=quant,
                        files=tuple(sorted(p for p in folder.rglob("*") if p.is_file())))

    def reference(self, model_dir: Path, target: "Target", out_dir: Path, *, name: str) -> Artifact:
        """The unquantized graph (`export`), on the host: fp32, or fp16 for an fp16 target."""
        from edgeft.backends.tensorrt.export import export

        folder = artifact_dir(out_dir, target.quant)
        export(model_dir, folder, target.quant, marker=marker(self.name, target.quant))
        return self._artifact(folder, target.quant)

    def compile(self, model_dir: Path, target: "Target", out_dir: Path, *, reference: Artifact, name: str,
                importance: Path | None = None) -> Artifact:
        """`<out_dir>/model-tensorrt-<quant>/`: the reference copied at its own level, else ModelOpt's
        weight-only int8/int4 of it (its own calibration; `importance` is never given). The engine is built on
        the device, from this folder."""
        from edgeft.atomic_io import atomic_dir
        from edgeft.backends.tensorrt.quantize import quantize

        folder = artifact_dir(out_dir, target.quant)
        if target.quant == reference.quant:
            with atomic_dir(folder) as tmp:
                shutil.copytree(reference.path, tmp, dirs_exist_ok=True)
        else:
            quantize(reference.path, folder, target.quant, target.options,
                     calibration_ids(reference.path, target.options.calibration_records), marker=marker(self.name, target.quant))
        return self._artifact(folder, target.quant)

    def adapter_base(self, base: Artifact, reference: Artifact, model_dir: Path, adapter_dirs: "Sequence[Path]",
                     target: "Target", *, importance: Path | None = None) -> tuple[Artifact, Artifact]:
        from edgeft.backends.registry import no_adapters

        raise no_adapters(self.name, file=model_dir)

    def export_adapter(self, adapter_dir: Path, base_dir: Path, out_path: Path, *, base: Artifact) -> Path:
        from edgeft.backends.registry import no_adapters

        raise no_adapters(self.name, file=adapter_dir)

    def check_adapter(self, adapter: Path, base: Artifact) -> None:
        from edgeft.backends.registry import no_adapters

        raise no_adapters(self.name, file=adapter)

    def adapter_positions(self, adapter: Path) -> int:
        return 0  # no adapters (check_adapter refuses them)

    def load(self, artifact: Artifact, target: "Target") -> "EngineRunner":
        from edgeft.backends.tensorrt.engine import EngineRunner, build_engine

        self.check()
        engine = build_engine(artifact.path, artifact.quant, target.options)
        return EngineRunner(artifact.path, engine, context=min(target.bench.context, target.options.max_cache_tokens))
