"""The GGUF backend: our HF -> GGUF converter (one registered spec per model family in `arch`),
llama.cpp's quantizer and llama-cpp-python as runtime. Registered here, light: no runtime import."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeft.backends.options import BackendOptions
from edgeft.backends.registry import BackendInfo, register

# Named as llama.cpp users know them; the first three are unquantized.
LEVELS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1",
          "q4_k_m", "q4_k_s", "q4_0", "q4_1", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k")
UNQUANTIZED = ("f32", "f16", "bf16")
# `--quant auto` candidates: the K-quant mixes llama.cpp users ship, and q4_0 for its fast kernels.
AUTO_LEVELS = ("q3_k_m", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16")
# Bits per weight (block scales included; K-quant mixes averaged as llama.cpp reports them), for
# the size estimate printed before training.
BITS_PER_WEIGHT = {
    "f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.56, "q5_k_m": 5.69, "q5_k_s": 5.52, "q5_0": 5.5,
    "q5_1": 6.0, "q4_k_m": 4.89, "q4_k_s": 4.57, "q4_0": 4.5, "q4_1": 5.0, "q3_k_m": 3.91, "q2_k": 3.35,
}
# User-facing level -> llama.cpp's llama_ftype value (LLAMA_FTYPE_* in llama.h).
FTYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,
    "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16,
    "q5_k_m": 17, "q6_k": 18, "bf16": 32,
}
GGUF_MAGIC = b"GGUF"
# Export check: relative max-abs logit error allowed against transformers in fp32.
TOLERANCES = {"f32": 1e-3, "f16": 2e-2, "bf16": 5e-2}


def reference_level(quant: str) -> str:
    """An unquantized level is its own reference; the others quantize from f16, as llama.cpp users do."""
    return quant if quant in UNQUANTIZED else "f16"


def identify(path: Path) -> str | None:
    """The level of a GGUF file (its general.file_type), or None when `path` is not one."""
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            return None
    from edgeft.backends.gguf.header import read_header

    try:
        ftype = read_header(path).fields.get("general.file_type")
    except (OSError, ValueError):  # a damaged file is the loader's to report, with its reason
        return None
    if not isinstance(ftype, int):
        ftype = None
    by_value = {v: k for k, v in FTYPES.items()}
    return by_value.get(ftype, "f16" if ftype is None else f"ftype-{ftype}")


def check_file(path: Path) -> None:
    from edgeft.backends.gguf.backend import check_gguf_file

    check_gguf_file(path)


def architectures() -> tuple[str, ...]:
    from edgeft.backends.gguf.arch import FAMILIES

    return tuple(sorted(FAMILIES))


@dataclass(frozen=True)
class GGUFOptions(BackendOptions):
    """`[gguf]`: llama.cpp quantizer settings beyond the level."""

    # Tensor type of the token embedding table (llama.cpp's `token_embedding_type`); "" keeps the
    # level's own choice. With a large vocabulary this table is a large share of the file.
    embedding_type: str = ""
    # Round every tensor below 8 bits weighing its input columns by their mean square activation (an
    # importance matrix, `edgeft.importance`) on the build's training split, or, when nothing is trained,
    # on its data's prompts.
    imatrix: bool = True
    # Round q5_0, q5_1 and q4_K tensors with GPTQ's error feedback under the full second moments of their
    # inputs, measured on the same text (`gptq.py`), instead of each weight alone. Same bytes and layout;
    # costs a longer importance pass and the rounding itself (benchmarks/README.md, "GPTQ in the build").
    # Needs imatrix.
    gptq: bool = False

    @classmethod
    def parse(cls, raw, problems, *, table):
        options = super().parse(raw, problems, table=table)
        if options.gptq and not options.imatrix:
            problems.append((f"{table}.gptq", "needs imatrix = true: GPTQ rounds on the grid the importance-weighed "
                                              "rounding sets, under the same pass's second moments"))
        return options


# llama.cpp tensor types (ggml_type values) a table may be stored in.
TENSOR_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10, "q3_k": 11,
                "q4_k": 12, "q5_k": 13, "q6_k": 14}
GGUFOptions.CHOICES = {"embedding_type": ("", *TENSOR_TYPES)}
# Levels and tensor types (both named as ggml names its types) whose quantizer ignores an importance matrix.
UNWEIGHED = ("f32", "f16", "bf16", "q8_0")


def uses_importance(options: GGUFOptions, quant: str) -> bool:
    """Whether a build at `quant` with these options would weigh its rounding by an importance matrix:
    the profile allows it and some tensor is quantized below 8 bits (the table may be, at q8_0)."""
    return options.imatrix and (quant not in UNWEIGHED or options.embedding_type not in ("", *UNWEIGHED))


def uses_moments(options: GGUFOptions, quant: str) -> bool:
    """GPTQ rounds under the inputs' second moments, wherever the level weighs its rounding at all."""
    return options.gptq and uses_importance(options, quant)


def rounding_note(options: GGUFOptions, quant: str, folder: Path) -> str | None:
    """What GPTQ rewrote at `quant`, from the record the compile left in the importance folder."""
    if not options.gptq:
        return None
    from edgeft.backends.gguf.gptq import done_note

    return done_note(folder, quant)


register(BackendInfo(
    name="gguf",
    module="edgeft.backends.gguf.backend:GGUFBackend",
    summary="llama.cpp GGUF file, run with llama-cpp-python",
    quant_levels=LEVELS,
    unquantized=UNQUANTIZED,
    auto_levels=AUTO_LEVELS,
    reference_level=reference_level,
    tolerances=TOLERANCES,
    bits_per_weight=BITS_PER_WEIGHT,
    tracked_packages=("gguf", "llama-cpp-python"),
    architectures=architectures,
    options=GGUFOptions,
    uses_importance=uses_importance,
    uses_moments=uses_moments,
    rounding_note=rounding_note,
    teacher=True,
    identify=identify,
    check_file=check_file,
    adapter_suffix=".gguf",
    no_prefix_because="llama.cpp has no prefix adapters and takes no initial KV cache from a file that edgeft could "
                      "write and prove (use --method lora, or --target onnx)",
))
