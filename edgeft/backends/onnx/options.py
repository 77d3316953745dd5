"""The `[onnx]` table of a target profile: typed options for the ONNX exporter and runtime.

Kept free of heavy imports: profile validation (and so `edgeft --help`) reads it.
The values are handed to onnxruntime-genai's model builder, whose own option names are
noted beside each field.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeft.backends.options import BackendOptions

# MatMulNBits block sizes the builder and ONNX Runtime's CPU kernels accept.
BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits accuracy levels: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
# Weight-only quantization algorithms of the builder (`algo_config`).
ALGORITHMS = ("default", "rtn", "k_quant")


@dataclass(frozen=True)
class OnnxOptions(BackendOptions):
    """How `onnx` targets are exported; used for int4 and int8 (weight-only MatMulNBits)."""

    block_size: int = 32  # builder `block_size`: weights per quantization block
    accuracy_level: int = 4  # builder `accuracy_level`: 4 = int8 activations, ONNX Runtime's fast CPU path
    symmetric: bool = True  # builder `is_symmetric`: int4/int8 (True) or uint4/uint8 with zero points
    algorithm: str = "default"  # builder `algo_config`: round-to-nearest ("default", "rtn") or "k_quant"
    # int4, symmetric, round-to-nearest: round the builder's weights again, each block's scale chosen to
    # minimise the error weighed by what flows into each column (weighted_int4.py; not a builder option)
    importance: bool = True

    def builder_options(self) -> list[str]:
        """The builder's KEY=VALUE `--extra_options` for these settings."""
        return [
            f"block_size={self.block_size}",
            f"accuracy_level={self.accuracy_level}",
            f"is_symmetric={'true' if self.symmetric else 'false'}",
            f"algo_config={self.algorithm}",
        ]


OnnxOptions.CHOICES = {"block_size": BLOCK_SIZES, "accuracy_level": ACCURACY_LEVELS, "algorithm": ALGORITHMS}
