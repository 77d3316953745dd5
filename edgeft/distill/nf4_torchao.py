"""NF4 through torchao: the frozen 4-bit student base as `NF4Tensor` weights on plain `nn.Linear`s.

Why a second engine: QLoRA where bitsandbytes is not installed or has no backend for the
machine. torchao's NF4Tensor stores the QLoRA format (16 NormalFloat levels per 64-weight block)
and dequantizes it with ordinary torch ops inside `F.linear`, so a training step costs one
dequantization per layer on top of fp32 matmuls (paired run here: 0.76x fp32's tokens/s, against
0.91x for bitsandbytes; benchmarks/distill_step_paired.py).

Not bit-identical to bitsandbytes: torchao always stores the block scales in int8 (QLoRA's double
quantization; our bitsandbytes setting keeps them fp32) and rounds the 16 levels to 4 decimals, so
many weights land a little apart and a few on the neighbouring level. The error against fp32 is
the same size; merge therefore rebuilds the base with the engine recorded at training.

Which layers: every `nn.Linear` except the output head, the set bitsandbytes quantizes through
transformers (it skips the head; embeddings are not linear layers). peft needs no workaround:
`nn.Linear.forward` calls `F.linear`, which NF4Tensor routes through its own autograd function
(gradient for the input, none for the frozen weight), and peft's LoRA wrapper calls exactly that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeft.errors import BackendUnavailable

if TYPE_CHECKING:
    import torch

BLOCK_SIZE = 64  # weights per NF4 block (QLoRA paper, torchao's default)
MAX_SCALER_BLOCK = 256  # block scales per int8 scale block (QLoRA paper, torchao's default)


def nf4_api():
    """(NF4Tensor, to_nf4) from whichever module this torchao keeps them in (moved in 0.18)."""
    from edgeft.progress import mute_import_noise

    mute_import_noise()
    try:
        from torchao.quantization import NF4Tensor, to_nf4
    except ImportError:
        from torchao.dtypes.nf4tensor import NF4Tensor, to_nf4  # torchao < 0.18
    return NF4Tensor, to_nf4


def available() -> bool:
    try:
        nf4_api()
    except ImportError:
        return False
    return True


def scaler_block_size(n_blocks: int) -> int:
    """The largest divisor of `n_blocks` up to 256. torchao requires the block count to be a
    multiple of the scale block, and real widths often are not (SmolLM2's 576x576 q_proj has
    5184 blocks: 216 here); a smaller scale block only stores the scales more precisely."""
    return max(s for s in range(1, min(MAX_SCALER_BLOCK, n_blocks) + 1) if n_blocks % s == 0)


def target_linears(model) -> list[tuple[str, "torch.nn.Linear"]]:
    """(name, module) of every linear layer the engine quantizes: all but the output head."""
    import torch

    head = model.get_output_embeddings()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def quantize(model) -> int:
    """Replace each target layer's weight by a frozen NF4Tensor in place; returns how many."""
    import torch

    _, to_nf4 = nf4_api()
    layers = target_linears(model)
    for name, m in layers:
        w = m.weight.detach()
        if w.numel() % BLOCK_SIZE:
            raise BackendUnavailable(f"torchao NF4 needs weights whose size is a multiple of {BLOCK_SIZE}; {name} is "
                                     f"{tuple(w.shape)}: use --nf4-engine bitsandbytes or --no-quantize-base")
        nf4 = to_nf4(w.contiguous(), BLOCK_SIZE, scaler_block_size(w.numel() // BLOCK_SIZE))
        m.weight = torch.nn.Parameter(nf4, requires_grad=False)
    return len(layers)


def nf4_layers(model) -> list[tuple[str, "torch.nn.Linear"]]:
    """(name, module) of every linear layer whose weight is an NF4Tensor (under peft: the base layers)."""
    import sys

    import torch

    if "torchao" not in sys.modules:  # nothing can hold an NF4Tensor before torchao is imported
        return []
    nf4_tensor, _ = nf4_api()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and isinstance(m.weight, nf4_tensor)]


def dequantized_state(model) -> dict[str, "torch.Tensor"]:
    """{module name: fp32 weight} for every NF4 layer: the very tensor `F.linear` multiplies by."""
    import torch

    return {name: m.weight.to(torch.float32).detach() for name, m in nf4_layers(model)}
