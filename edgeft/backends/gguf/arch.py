"""Per-architecture rules for writing a Hugging Face decoder as GGUF.

One small class per family, registered explicitly; each says how hyper-parameters map to
GGUF keys, how tensor names map, and how tensors must be laid out for llama.cpp.
The facts encoded here (key and tensor names, the rotary layout) come from llama.cpp's
documentation of the format; the code is ours.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from edgeft.errors import UnsupportedArchitecture

if TYPE_CHECKING:
    import numpy as np
    from gguf import GGUFWriter

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# HF per-layer suffix -> GGUF per-layer name (without the "blk.N." prefix).
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",  # Qwen3: per-head RMS norms on q and k
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# Buffers some checkpoints carry that llama.cpp recomputes itself.
_SKIPPED = re.compile(r"(rotary_emb\.inv_freq|\.rotary_emb\.)")


class ArchFamily:
    """Hooks a family overrides; the defaults describe a plain Llama-style decoder."""

    hf_name: ClassVar[str]
    gguf_arch: ClassVar[str]

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.n_head = int(config["num_attention_heads"])
        self.n_kv_head = int(config.get("num_key_value_heads") or self.n_head)
        self.hidden = int(config["hidden_size"])
        self.head_dim = int(config.get("head_dim") or self.hidden // self.n_head)
        self.tied = bool(config.get("tie_word_embeddings", False))

    # Rope scaling types this family converts; anything else is refused by name.
    ROPE_TYPES: ClassVar[tuple[str, ...]] = ("default", "linear")

    def rope_scaling(self) -> tuple[str, dict[str, Any], str]:
        """(type, parameters, config key). transformers 4 writes `rope_scaling`; transformers 5 writes
        the same setting as `rope_parameters` (with rope_theta inside), and a folder re-saved by it
        has only that key: both are read, or a llama3-scaled model would convert without its scaling."""
        for key in ("rope_scaling", "rope_parameters"):
            params = self.config.get(key)
            if isinstance(params, dict):
                kind = params.get("rope_type") or params.get("type") or "default"
                if kind != "default" or key == "rope_parameters":
                    return kind, params, key
        return "default", {}, "rope_scaling"

    def check(self, file: str) -> None:
        """Refuse configurations llama.cpp would run wrongly rather than convert them silently."""
        kind, _, key = self.rope_scaling()
        if kind not in self.ROPE_TYPES:
            raise UnsupportedArchitecture(f"rope scaling type {kind!r} is not supported (supported: {', '.join(self.ROPE_TYPES)})",
                                          file=file, place=key)

    def extra_tensors(self) -> list[tuple[str, "np.ndarray"]]:
        """Tensors llama.cpp wants that the checkpoint does not store (computed from the config)."""
        return []

    def rotary_dim(self) -> int:
        """Dimensions of each head the rotary embedding turns (all of them, unless a family says less)."""
        return self.head_dim

    def rope_theta(self) -> float:
        theta = self.config.get("rope_theta")
        if theta is None:  # transformers 5 nests it under rope_parameters
            theta = (self.config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return float(theta)

    def write_hparams(self, w: "GGUFWriter", vocab_size: int) -> None:
        c = self.config
        w.add_context_length(int(c.get("max_position_embeddings", 2048)))
        w.add_embedding_length(self.hidden)
        w.add_block_count(int(c["num_hidden_layers"]))
        w.add_feed_forward_length(int(c["intermediate_size"]))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_kv_head)
        w.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
        w.add_rope_freq_base(self.rope_theta())
        w.add_rope_dimension_count(self.rotary_dim())
        w.add_vocab_size(vocab_size)
        if self.head_dim != self.hidden // self.n_head:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        kind, scaling, _ = self.rope_scaling()
        if kind == "linear":
            from gguf import RopeScalingType

            w.add_rope_scaling_type(RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(scaling["factor"]))

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF tensor name, or None for a tensor llama.cpp does not want."""
        if _SKIPPED.search(hf_name):
            return None
        if hf_name == "lm_head.weight" and self.tied:
            return None
        if hf_name in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[hf_name]
        m = _LAYER.match(hf_name)
        if m and m.group(2) in _LAYER_NAMES:
            return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
        raise UnsupportedArchitecture(f"tensor {hf_name!r} has no GGUF counterpart for {self.hf_name}", file="model.safetensors")

    def transform(self, gguf_name: str, tensor: "np.ndarray") -> "np.ndarray":
        return tensor


def _unpermute_rotary(w: "np.ndarray", n_heads: int) -> "np.ndarray":
    """HF Llama stores each head's rotary pairs as two halves [x0..x(d/2-1), y0..y(d/2-1)];
    llama.cpp's Llama rope rotates adjacent pairs (x0, y0, x1, y1, ...). Interleave the halves."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *rest).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(params: dict[str, Any], theta: float, head_dim: int) -> "np.ndarray":
    """Llama 3.x rope scaling as llama.cpp applies it: one divisor per rotary frequency (the
    `rope_freqs` tensor). Wavelengths shorter than original_context / high_freq_factor keep their
    frequency, longer than original_context / low_freq_factor are divided by `factor`, and those
    between are blended smoothly: the same frequencies transformers computes for rope_type llama3."""
    import math

    import numpy as np

    factor = float(params["factor"])
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old_context = float(params.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            out.append(1.0)
        elif wavelen > old_context / low:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


class LlamaFamily(ArchFamily):
    hf_name = "LlamaForCausalLM"
    gguf_arch = "llama"
    ROPE_TYPES = ("default", "linear", "llama3")

    def extra_tensors(self) -> list[tuple[str, "np.ndarray"]]:
        kind, params, _ = self.rope_scaling()
        if kind == "llama3":
            return [("rope_freqs.weight", llama3_rope_factors(params, self.rope_theta(), self.head_dim))]
        return []

    def transform(self, gguf_name: str, tensor: "np.ndarray") -> "np.ndarray":
        if gguf_name.endswith("attn_q.weight") or gguf_name.endswith("attn_q.bias"):
            return _unpermute_rotary(tensor, self.n_head)
        if gguf_name.endswith("attn_k.weight") or gguf_name.endswith("attn_k.bias"):
            return _unpermute_rotary(tensor, self.n_kv_head)
        return tensor


class Qwen2Family(ArchFamily):
    """Qwen2 runs with NEOX-style rope in llama.cpp, the same half-split layout HF uses: no permutation."""

    hf_name = "Qwen2ForCausalLM"
    gguf_arch = "qwen2"

    def check(self, file: str) -> None:
        super().check(file)
        if self.config.get("use_sliding_window"):
            raise UnsupportedArchitecture("sliding-window attention is not supported", file=file, place="use_sliding_window")


class Qwen3Family(Qwen2Family):
    """Qwen3: Qwen2's layout without attention biases, plus per-head RMS norms on q and k (applied
    before the rotary embedding, as llama.cpp's qwen3 graph does); NEOX rope, no permutation."""

    hf_name = "Qwen3ForCausalLM"
    gguf_arch = "qwen3"


class MistralFamily(LlamaFamily):
    """Mistral: the Llama layout under llama.cpp's `llama` graph. Sliding-window attention (Mistral
    7B v0.1) is not run by that graph, so a window is refused rather than silently ignored."""

    hf_name = "MistralForCausalLM"
    gguf_arch = "llama"
    ROPE_TYPES = ("default", "linear")

    def check(self, file: str) -> None:
        super().check(file)
        if self.config.get("sliding_window"):
            raise UnsupportedArchitecture(f"sliding-window attention ({self.config['sliding_window']} tokens) is not supported",
                                          file=file, place="sliding_window")


class Phi3Family(ArchFamily):
    """Phi-3 / Phi-4-mini: fused `qkv_proj` and `gate_up_proj`, kept fused as llama.cpp's phi3 graph
    wants (`attn_qkv`; `ffn_up` holding gate then up, split by its SwiGLU); NEOX rope over the first
    `partial_rotary_factor` of each head, no permutation. A sliding window is refused: with
    `attention.sliding_window` written, llama.cpp 0.3.36's phi3 graph still attends past it (measured:
    logits off by order 1 beyond the window).

    `longrope` (`su` in older configs; the 128k variants) is written as llama.cpp's phi3 graph reads
    it: the `rope_factors_long` and `rope_factors_short` divisors of each rotary frequency, the
    original context, and the cos/sin scale as `rope.scaling.attn_factor` (the config's own
    `attention_factor`, else sqrt(1 + ln(s) / ln(original)) for s = context / original, as
    transformers computes it). One difference is llama.cpp's and stays: it picks the long factors
    when the runtime's context exceeds the original one, transformers when the sequence does."""

    hf_name = "Phi3ForCausalLM"
    gguf_arch = "phi3"
    ROPE_TYPES = ("default", "linear", "longrope", "su")
    NAMES: ClassVar[dict[str, str]] = {
        "self_attn.qkv_proj.weight": "attn_qkv.weight",
        "mlp.gate_up_proj.weight": "ffn_up.weight",
    }

    def _longrope(self) -> dict[str, Any] | None:
        """original context, attention factor and both factor lists of a longrope config; else None."""
        import math

        kind, params, key = self.rope_scaling()
        if kind not in ("longrope", "su"):
            return None
        context = int(self.config.get("max_position_embeddings", 2048))
        original = int(params.get("original_max_position_embeddings") or self.config.get("original_max_position_embeddings")
                       or context)
        factor = float(params.get("factor") or context / original)
        attn = params.get("attention_factor")
        if attn is None:
            attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        half = self.rotary_dim() // 2
        for name in ("long_factor", "short_factor"):
            if len(params.get(name) or ()) != half:
                raise UnsupportedArchitecture(f"longrope needs {half} {name} values (one per rotary frequency), "
                                              f"not {len(params.get(name) or ())}", file="config.json", place=f"{key}.{name}")
        return {"original": original, "attn_factor": float(attn), "long": params["long_factor"], "short": params["short_factor"]}

    def extra_tensors(self) -> list[tuple[str, "np.ndarray"]]:
        import numpy as np

        rope = self._longrope()
        if rope is None:
            return []
        return [("rope_factors_long.weight", np.asarray(rope["long"], dtype=np.float32)),
                ("rope_factors_short.weight", np.asarray(rope["short"], dtype=np.float32))]

    def write_hparams(self, w: "GGUFWriter", vocab_size: int) -> None:
        super().write_hparams(w, vocab_size)
        rope = self._longrope()
        if rope is not None:
            w.add_rope_scaling_orig_ctx_len(rope["original"])
            w.add_rope_scaling_attn_factors(rope["attn_factor"])

    def rotary_dim(self) -> int:
        kind, params, _ = self.rope_scaling()
        factor = params.get("partial_rotary_factor", self.config.get("partial_rotary_factor", 1.0))
        return int(self.head_dim * float(factor or 1.0))

    def check(self, file: str) -> None:
        super().check(file)
        if self.config.get("sliding_window"):
            raise UnsupportedArchitecture(f"sliding-window attention ({self.config['sliding_window']} tokens) is not supported",
                                          file=file, place="sliding_window")

    def gguf_name(self, hf_name: str) -> str | None:
        m = _LAYER.match(hf_name)
        if m and m.group(2) in self.NAMES:
            return f"blk.{m.group(1)}.{self.NAMES[m.group(2)]}"
        return super().gguf_name(hf_name)


class Gemma3Family(ArchFamily):
    """Gemma 3, text only (`Gemma3ForCausalLM`, Gemma 3 270M and 1B). RMS norms scale by (1 + w):
    written with the 1 added, as llama.cpp's gemma3 graph multiplies by the stored weight. Pre- and
    post-norms around both attention and feed-forward, per-head q/k norms, the embedding scaled by
    sqrt(hidden) and the GELU-tanh gate in llama.cpp's graph itself; NEOX rope, no permutation; a
    tied head. llama.cpp fixes three things this spec must match, so a config that differs is
    refused by key: every sixth layer global (the rest sliding-window), the local rope base 10000,
    and queries scaled by 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim)."""

    hf_name = "Gemma3ForCausalLM"
    gguf_arch = "gemma3"
    PATTERN = 6
    LOCAL_BASE = 10000.0
    NAMES: ClassVar[dict[str, str]] = {
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    }

    def _rope(self, layer_type: str) -> dict[str, Any]:
        params = self.config.get("rope_parameters")
        if isinstance(params, dict) and layer_type in params:  # transformers 5: one table per layer type
            return dict(params[layer_type])
        if layer_type == "sliding_attention":  # transformers 4: rope_local_base_freq beside rope_theta
            return {"rope_type": "default", "rope_theta": self.config.get("rope_local_base_freq", self.LOCAL_BASE)}
        return {**(self.config.get("rope_scaling") or {}), "rope_theta": self.config.get("rope_theta", 1e6)}

    def rope_scaling(self) -> tuple[str, dict[str, Any], str]:
        params = self._rope("full_attention")
        kind = params.get("rope_type") or params.get("type") or "default"
        return kind, params, "rope_parameters" if "rope_parameters" in self.config else "rope_scaling"

    def rope_theta(self) -> float:
        return float(self._rope("full_attention").get("rope_theta", 1e6))

    def check(self, file: str) -> None:
        super().check(file)
        c = self.config
        n = int(c["num_hidden_layers"])
        types = c.get("layer_types") or ["full_attention" if (i + 1) % self.PATTERN == 0 else "sliding_attention" for i in range(n)]
        want = ["full_attention" if (i + 1) % self.PATTERN == 0 else "sliding_attention" for i in range(n)]
        if list(types) != want:
            raise UnsupportedArchitecture(f"a layer pattern other than every {self.PATTERN}th layer global is not supported",
                                          file=file, place="layer_types")
        local = float(self._rope("sliding_attention").get("rope_theta", self.LOCAL_BASE))
        if local != self.LOCAL_BASE:
            raise UnsupportedArchitecture(f"a local rope base of {local:g} is not supported (llama.cpp uses {self.LOCAL_BASE:g})",
                                          file=file, place="rope_parameters")
        scalar = c.get("query_pre_attn_scalar", self.head_dim)
        if scalar != self.head_dim:
            raise UnsupportedArchitecture(f"query_pre_attn_scalar {scalar} other than head_dim {self.head_dim} is not supported",
                                          file=file, place="query_pre_attn_scalar")
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if c.get(key) is not None:
                raise UnsupportedArchitecture("logit soft-capping is not supported", file=file, place=key)

    def write_hparams(self, w: "GGUFWriter", vocab_size: int) -> None:
        super().write_hparams(w, vocab_size)
        if self.head_dim == self.hidden // self.n_head:  # the base writes these only when they differ
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        if self.config.get("sliding_window"):
            w.add_sliding_window(int(self.config["sliding_window"]))

    def gguf_name(self, hf_name: str) -> str | None:
        m = _LAYER.match(hf_name)
        if m and m.group(2) in self.NAMES:
            return f"blk.{m.group(1)}.{self.NAMES[m.group(2)]}"
        return super().gguf_name(hf_name)

    def transform(self, gguf_name: str, tensor: "np.ndarray") -> "np.ndarray":
        return tensor + 1.0 if gguf_name.endswith("norm.weight") else tensor


FAMILIES: dict[str, type[ArchFamily]] = {}


def register_family(cls: type[ArchFamily]) -> None:
    if cls.hf_name in FAMILIES:
        raise ValueError(f"architecture {cls.hf_name} already registered by {FAMILIES[cls.hf_name].__name__}")
    FAMILIES[cls.hf_name] = cls


register_family(LlamaFamily)
register_family(Qwen2Family)
register_family(Qwen3Family)
register_family(MistralFamily)
register_family(Phi3Family)
register_family(Gemma3Family)


def family_for(config: dict[str, Any], file: str) -> ArchFamily:
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in FAMILIES:
        raise UnsupportedArchitecture(
            f"architecture {arch} is not supported (supported: {', '.join(sorted(FAMILIES))})", file=file, place="architectures"
        )
    family = FAMILIES[arch](config)
    family.check(file)
    return family
