"""The trainable student: a frozen base (NF4 through bitsandbytes or torchao, or fp32) with LoRA adapters (peft).

The NF4 engine is chosen once (`resolve_engine`) and recorded with the adapter, so merge
rebuilds the very base training saw; torchao's side lives in `nf4_torchao`.

The repack trap: on a CPU with AVX512-BF16, a bitsandbytes `Linear4bit` that runs a forward in
eval mode without grad repacks its weight into a CPU-only layout, in place; training steps after
that silently get no gradient through the base. We switch that repacking off on every 4-bit
layer, check no layer is packed before training, and the loop stops when the adapters get no
gradient at a step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.distill import nf4_torchao
from edgeft.distill.config import NF4_ENGINES, DistillConfig
from edgeft.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def nf4_config():
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                              bnb_4bit_use_double_quant=False)


def _bitsandbytes_importable() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine: str) -> str:
    """The NF4 engine that will run: "auto" is bitsandbytes when importable, else torchao."""
    if engine not in NF4_ENGINES:
        raise ConfigError([("nf4_engine", f"must be one of {', '.join(NF4_ENGINES)}, got {engine!r}")])
    if engine in ("auto", "bitsandbytes") and _bitsandbytes_importable():
        return "bitsandbytes"
    if engine in ("auto", "torchao") and nf4_torchao.available():
        return "torchao"
    needs = {"auto": "bitsandbytes or torchao (pip install bitsandbytes, or pip install torchao)",
             "bitsandbytes": "bitsandbytes (pip install bitsandbytes), or pass --nf4-engine torchao",
             "torchao": "torchao (pip install torchao), or pass --nf4-engine bitsandbytes"}[engine]
    raise BackendUnavailable(f"4-bit NF4 needs {needs}, or pass --no-quantize-base")


def load_base(student_dir: Path, quantize: bool, engine: str = DistillConfig.nf4_engine) -> "PreTrainedModel":
    """The student base from its HF folder: NF4-quantized (frozen) by `engine`, or plain fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    if not quantize:
        return AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    if resolve_engine(engine) == "torchao":
        model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
        nf4_torchao.quantize(model)
        return model
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32, quantization_config=nf4_config())
    disable_cpu_repack(model)
    return model


def four_bit_layers(model) -> list:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def disable_cpu_repack(model) -> int:
    """Switch off bitsandbytes' in-place CPU repacking on every 4-bit layer (see module doc)."""
    layers = four_bit_layers(model)
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def packed_layers(model) -> int:
    """How many 4-bit layers hold the CPU-repacked layout (training through them gets no gradient)."""
    return sum(1 for m in four_bit_layers(model)
               if getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False))


def unpack(model) -> None:
    """Undo a repack (bitsandbytes keeps the inverse) so a packed model trains again."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    for m in four_bit_layers(model):
        qs = getattr(m.weight, "quant_state", None)
        if getattr(qs, "packing_format_for_cpu", False):
            m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu_inverse(m.weight.data, qs)


def add_lora(base: "PreTrainedModel", config: DistillConfig):
    """Wrap the base with fresh LoRA adapters (or, with `config.method` "prefix", a fresh learned
    prefix); only those train."""
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    if config.method == "prefix":
        return get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=config.prefix_tokens))

    targets = "all-linear" if tuple(config.target_modules) == ("all-linear",) else list(config.target_modules)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    if config.grad_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    try:
        model = get_peft_model(base, lora)
    except ValueError as exc:  # peft names the target modules it could not find
        raise ConfigError([("target_modules", str(exc).split("\n")[0])]) from None
    return model


def init_prefix(model, token_ids: "Sequence[int]") -> None:
    """Start a fresh prefix from the keys and values the base computes for real text, the first
    virtual-token count of `token_ids` (repeated when shorter), as Li & Liang (2021) advise: peft's
    random start puts noise before every sequence, which the base reads as garbage (measured:
    benchmarks/README.md, prefix_vs_lora.py); this one starts as the base having read that text."""
    import torch

    from edgeft.distill.loop import TrainingError

    config = model.active_peft_config
    n = config.num_virtual_tokens
    if not token_ids:
        raise TrainingError("no training record to start the prefix from")
    ids = (list(token_ids) * (n // len(token_ids) + 1))[:n]
    with torch.no_grad():
        out = model.get_base_model().model(input_ids=torch.tensor([ids]), use_cache=True)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        kv = torch.stack([t[0] for layer in cache.layers for t in (layer.keys, layer.values)])  # [2L, heads, n, hd]
        weight = model.prompt_encoder[model.active_adapter].embedding.weight
        weight.copy_(kv.permute(2, 0, 1, 3).reshape(n, -1).to(weight.dtype))
        seeded = model.get_prompt(batch_size=1)
        for mine, base in zip(seeded.layers, cache.layers):
            if not (torch.allclose(mine.keys, base.keys, atol=1e-5) and torch.allclose(mine.values, base.values, atol=1e-5)):
                raise TrainingError("this model's prefix layout is not peft's plain one; cannot start the prefix from text")


def load_adapter(base: "PreTrainedModel", adapter_dir: Path, trainable: bool = False):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


def dequantized_state(model) -> dict[str, "object"]:
    """{module name: fp32 weight} for every 4-bit layer (either engine), dequantized exactly as training saw it."""
    out = nf4_torchao.dequantized_state(model)
    layers = set(id(m) for m in four_bit_layers(model))
    if layers:
        import bitsandbytes.functional as bf

        unpack(model)
        for name, m in model.named_modules():
            if id(m) in layers:
                out[name] = bf.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
    return out
