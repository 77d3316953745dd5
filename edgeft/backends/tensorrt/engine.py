"""The device half: a TensorRT engine built from the TensorRT-ready graph, and a runner for it.

Written against TensorRT 10's Python API (`tensorrt`), with PyTorch's CUDA tensors as the device
buffers. Needs an NVIDIA GPU and TensorRT; no machine this project builds on has both, so it runs
only through `benchmarks/tensorrt_device.py` on such a machine. Engines are specific to a GPU and a
TensorRT version: each is cached under ~/.cache/edgeft/tensorrt (or $EDGEFT_CACHE), keyed by the
graph's bytes, the options, the GPU and TensorRT's version, never written into the artifact."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.atomic_io import atomic_path
from edgeft.backends.tensorrt.runner import ExplicitKVBase
from edgeft.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np

    from edgeft.backends.tensorrt import TensorRTOptions


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGEFT_CACHE") or Path.home() / ".cache" / "edgeft")
    return root / "tensorrt"


def engine_key(folder: Path, quant: str, options: "TensorRTOptions") -> str:
    import dataclasses

    import tensorrt as trt
    import torch

    h = hashlib.sha256()
    for f in sorted(folder.glob("model.onnx*")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    h.update(json.dumps([quant, dataclasses.asdict(options), torch.cuda.get_device_name(0), trt.__version__]).encode())
    return h.hexdigest()[:32]


def build_engine(folder: Path, quant: str, options: "TensorRTOptions") -> Path:
    """Parse the graph, set the precision flags and one optimization profile (prompt length 1..max,
    cache length 0..max), build, and cache the serialized engine; reused while nothing changed."""
    import tensorrt as trt

    from edgeft.backends.tensorrt.export import MODEL_FILE
    from edgeft.backends.tensorrt.runner import read_shapes

    path = cache_dir() / f"{engine_key(folder, quant, options)}.plan"
    if path.is_file():
        return path
    shapes = read_shapes(folder)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if options.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(folder / MODEL_FILE)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT's ONNX parser refused the graph ({errors[:300]})", file=folder / MODEL_FILE)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if not options.strongly_typed and quant != "fp32":
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT may run fp16 kernels where the graph says fp32
    profile = builder.create_optimization_profile()
    prompt, cache = options.max_prompt_tokens, options.max_cache_tokens
    for name in ("input_ids", "position_ids"):
        profile.set_shape(name, (1, 1), (1, max(1, prompt // 2)), (1, prompt))
    kv, hd = int(shapes["kv_heads"]), int(shapes["head_dim"])
    for name in shapes["inputs"]:
        if name.startswith("past_key_values."):
            profile.set_shape(name, (1, kv, 0, hd), (1, kv, cache // 2, hd), (1, kv, cache - 1, hd))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError("TensorRT could not build an engine from the graph", file=folder / MODEL_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return path


class EngineRunner(ExplicitKVBase):
    """Runs a built engine on the GPU: one execution per step, the KV cache kept in device tensors."""

    def __init__(self, folder: Path, engine_path: Path, context: int):
        import tensorrt as trt
        import torch

        super().__init__(folder, context)
        self.engine_path = engine_path
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise ArtifactError("TensorRT cannot load the engine (built by another TensorRT or for another GPU?)", file=engine_path)
        self.ctx = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._past_names = [n for n in self.shapes["inputs"] if n.startswith("past_key_values.")]
        self._present_names = [n for n in self.shapes["outputs"] if n.startswith("present.")]
        self._dtype = {trt.DataType.HALF: torch.float16, trt.DataType.FLOAT: torch.float32}[
            self.engine.get_tensor_dtype(self._past_names[0])]
        torch.cuda.reset_peak_memory_stats()
        self._step_ms: list[float] = []

    def _empty_past(self) -> list:
        import torch

        shape = (1, int(self.shapes["kv_heads"]), 0, int(self.shapes["head_dim"]))
        return [torch.empty(shape, dtype=self._dtype, device="cuda") for _ in self._past_names]

    def _step(self, ids: list[int], start: int, past: list) -> tuple["np.ndarray", list]:
        import torch

        t = time.perf_counter()
        n = len(ids)
        inputs = {"input_ids": torch.tensor([ids], dtype=torch.int64, device="cuda"),
                  "position_ids": torch.arange(start, start + n, dtype=torch.int64, device="cuda")[None, :],
                  **dict(zip(self._past_names, past))}
        for name, tensor in inputs.items():
            self.ctx.set_input_shape(name, tuple(tensor.shape))
            self.ctx.set_tensor_address(name, tensor.data_ptr())
        total = past[0].shape[2] + n
        logits = torch.empty((1, n, int(self.shapes["vocab_size"])), dtype=torch.float32, device="cuda")
        presents = [torch.empty((1, int(self.shapes["kv_heads"]), total, int(self.shapes["head_dim"])), dtype=self._dtype,
                                device="cuda") for _ in self._present_names]
        self.ctx.set_tensor_address("logits", logits.data_ptr())
        for name, tensor in zip(self._present_names, presents):
            self.ctx.set_tensor_address(name, tensor.data_ptr())
        if not self.ctx.execute_async_v3(self.stream.cuda_stream):
            raise ArtifactError("TensorRT failed to run the engine", file=self.engine_path)
        self.stream.synchronize()
        self._step_ms.append((time.perf_counter() - t) * 1000)
        return logits[0].cpu().numpy(), presents

    def reset_perf(self) -> None:
        self._step_ms = []

    def perf_counters(self) -> dict[str, float] | None:
        """Engine size and the GPU memory this process allocated at its peak (buffers and cache),
        beside the engine's own activation memory."""
        import torch

        return {"engine_mb": self.engine_path.stat().st_size / 1e6,
                "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated() / 1e6,
                "engine_device_memory_mb": self.engine.device_memory_size / 1e6,
                "steps": len(self._step_ms), "step_ms_total": sum(self._step_ms)}

    def library_versions(self) -> dict[str, str]:
        import tensorrt as trt
        import torch

        return {"tensorrt": trt.__version__, "torch": torch.__version__}

    def fingerprint(self) -> dict[str, object]:
        import torch

        return {**self.library_versions(), "gpu": torch.cuda.get_device_name(0),
                "cuda": torch.version.cuda, "engine": self.engine_path.name}

    def close(self) -> None:
        self.ctx = None
        self.engine = None
        super().close()
