"""Backends by name. Each entry names a module imported only when the backend is used,
so `edgeft --help`, `targets` and profile validation never import torch or a runtime."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgeft.backends.base import Backend


@dataclass(frozen=True)
class BackendEntry:
    name: str
    module: str  # "package.module:ClassName"
    quant_levels: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, BackendEntry] = {}


def register(entry: BackendEntry) -> None:
    """Add a backend; a second backend under the same name is an error, never a silent overwrite."""
    if entry.name in _REGISTRY:
        raise ValueError(
            f"backend {entry.name!r} is already registered by {_REGISTRY[entry.name].module}; "
            f"pick another name for {entry.module}"
        )
    _REGISTRY[entry.name] = entry


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def entry(name: str) -> BackendEntry:
    return _REGISTRY[name]


def quant_levels(name: str) -> tuple[str, ...]:
    return _REGISTRY[name].quant_levels


def get_backend(name: str) -> Backend:
    module_name, _, class_name = _REGISTRY[name].module.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()


register(
    BackendEntry(
        name="gguf",
        module="edgeft.backends.gguf:GGUFBackend",
        # Named as llama.cpp users know them; the first three are unquantized.
        quant_levels=("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1",
                      "q4_k_m", "q4_k_s", "q4_0", "q4_1", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k"),
        summary="llama.cpp GGUF file, run with llama-cpp-python",
    )
)

register(
    BackendEntry(
        name="onnx",
        module="edgeft.backends.onnx:OnnxBackend",
        # fp32 as exported; int8 and int4 are weight-only MatMulNBits. fp16 is left out: ONNX Runtime's
        # CPU provider has no fp16 kernels for these graphs (the builder's valid CPU precisions are fp32, int8, int4).
        quant_levels=("fp32", "int8", "int4"),
        summary="ONNX folder (KV cache, onnxruntime-genai layout), run with onnxruntime",
    )
)
