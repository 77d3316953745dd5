"""The ONNX backend: onnxruntime-genai's model builder as exporter, onnxruntime as runtime.
Registered here, light: no runtime import."""

from __future__ import annotations

from pathlib import Path

from edgeft.backends.onnx.options import OnnxOptions
from edgeft.backends.marker import read_level
from edgeft.backends.onnx.adapters import PREFIX_SUFFIX
from edgeft.backends.registry import BackendInfo, register

# fp32 as exported; int8 and int4 are weight-only MatMulNBits. fp16 is left out: ONNX Runtime's CPU
# provider has no fp16 kernels for these graphs (the builder's valid CPU precisions are fp32, int8, int4).
LEVELS = ("fp32", "int8", "int4")
# HF architectures whose export we test.
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM",
                 "Gemma3ForCausalLM")


def uses_importance(options: OnnxOptions, quant: str) -> bool:
    """int4 from the builder's round-to-nearest, symmetric (no zero points): `weighted_int4` rounds it again
    weighing the importance file. Zero points and the builder's k_quant are left as the profile asks."""
    return options.importance and quant == "int4" and options.symmetric and options.algorithm in ("default", "rtn")


def identify(path: Path) -> str | None:
    """The level of a folder (or its model.onnx) that this backend exported, from its marker."""
    return read_level(path, "onnx")


register(BackendInfo(
    name="onnx",
    module="edgeft.backends.onnx.backend:OnnxBackend",
    summary="ONNX folder (KV cache, onnxruntime-genai layout), run with onnxruntime",
    quant_levels=LEVELS,
    unquantized=("fp32",),
    auto_levels=("int4", "int8", "fp32"),
    reference_level=lambda quant: "fp32",
    tolerances={"fp32": 1e-3},
    # MatMulNBits stores one fp32 scale per block of 32 weights (the default block size).
    bits_per_weight={"fp32": 32.0, "int8": 9.0, "int4": 5.0},
    tracked_packages=("onnx", "onnxruntime", "onnxruntime-genai", "onnx-ir"),
    architectures=lambda: ARCHITECTURES,
    options=OnnxOptions,
    uses_importance=uses_importance,
    identify=identify,
    # The base graph takes LoRA weights as inputs; each task's values ship as one ONNX Runtime adapter file.
    adapter_suffix=".onnx_adapter",
    # A prefix-tuned task: its learned keys and values, which the runner feeds as the initial past_key_values.
    prefix_suffix=PREFIX_SUFFIX,
))
