"""The TensorRT backend: a TensorRT-ready ONNX graph (standard ops, explicit KV cache) exported and
quantized (NVIDIA ModelOpt, weight-only int8/int4 Q/DQ) on the host, an engine built and run on an
NVIDIA GPU through TensorRT's Python API. Registered here, light: no runtime import.

The host half runs anywhere and is checked in onnxruntime on CPU; the engine build and the runner
need an NVIDIA GPU and TensorRT (`pip install '.[tensorrt]'` from NVIDIA's index), which `check()`
names in one line when they are missing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeft.backends.options import BackendOptions
from edgeft.backends.marker import read_level
from edgeft.backends.registry import BackendInfo, register

# fp32 is for parity checks (and GPUs without fast fp16); fp16 is what engines are built from;
# int8 and int4 are weight-only, as Q/DQ nodes TensorRT fuses into its low-precision kernels.
LEVELS = ("fp32", "fp16", "int8", "int4")
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


def identify(path: Path) -> str | None:
    """The level of a folder (or its model.onnx) that this backend exported, from its marker."""
    return read_level(path, "tensorrt")


@dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    """`[tensorrt]`: the int4 quantizer and the engine's optimization profile."""

    block_size: int = 128  # int4: weights per scale (ModelOpt `block_size`)
    int4_method: str = "awq_clip"  # ModelOpt int4 calibration: activation-aware ("awq_clip") or plain rounding ("rtn_dq")
    calibration_records: int = 8  # sequences of the shipped eval text ModelOpt calibrates on
    max_prompt_tokens: int = 512  # the engine's optimization profile: longest prompt in one pass
    max_cache_tokens: int = 2048  # and longest KV cache (prompt + generated)
    strongly_typed: bool = False  # build from the graph's own types instead of letting TensorRT pick fp16
    workspace_mb: int = 1024  # builder scratch memory


TensorRTOptions.CHOICES = {"block_size": (32, 64, 128), "int4_method": ("awq_clip", "rtn_dq")}

register(BackendInfo(
    name="tensorrt",
    module="edgeft.backends.tensorrt.backend:TensorRTBackend",
    summary="TensorRT engine from a TensorRT-ready ONNX graph (needs an NVIDIA GPU and TensorRT)",
    quant_levels=LEVELS,
    unquantized=("fp32", "fp16"),
    auto_levels=("int4", "int8", "fp16"),
    # Quantized levels start from the fp32 graph (ModelOpt calibrates in onnxruntime on CPU, which has
    # no fp16 kernels for it), and are measured against it.
    reference_level=lambda quant: "fp16" if quant == "fp16" else "fp32",
    tolerances={"fp32": 1e-3, "fp16": 2e-2},
    # int4: one fp32 scale per block of 128; int8: one per output channel; the lm_head stays in fp16.
    bits_per_weight={"fp32": 32.0, "fp16": 16.0, "int8": 8.1, "int4": 4.3},
    tracked_packages=("onnx", "onnxruntime", "nvidia-modelopt", "tensorrt"),
    architectures=lambda: ARCHITECTURES,
    options=TensorRTOptions,
    identify=identify,
    no_adapters_because="its engines are built with every weight folded in, and edgeft writes no run-time LoRA for them",
))
