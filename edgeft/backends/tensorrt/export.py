"""HF folder -> a TensorRT-ready ONNX graph: standard ONNX ops only, the KV cache as explicit
inputs and outputs, fp16 weights (fp32 for the parity check).

Why our own graph and not onnxruntime-genai's builder: the builder fuses attention into
com.microsoft GroupQueryAttention and friends, contrib ops that TensorRT's ONNX parser does not
take. Here the decoder is re-traced from the HF model's own modules (projections, norms, rotary
embedding, MLP), with attention written as MatMul/Softmax over `past_key_values.<i>.key|value`
concatenated with the new keys, so TensorRT's parser sees plain ops and its optimization
profiles can range over prompt length and cache length.

Inputs: input_ids [batch, seq] int64, position_ids [batch, seq] int64, and for every layer
past_key_values.<i>.key / .value [batch, kv_heads, past, head_dim]. Outputs: logits
[batch, seq, vocab] and present.<i>.key / .value [batch, kv_heads, past + seq, head_dim].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.atomic_io import atomic_dir
from edgeft.errors import ArtifactError, UnsupportedArchitecture

if TYPE_CHECKING:
    import torch

# The registered families have the Llama shape (pre-norm, rotary q/k, gated MLP); Qwen2's q/k/v
# biases live in its Linear modules and come along.
from edgeft.backends.tensorrt import ARCHITECTURES  # noqa: E402

MODEL_FILE = "model.onnx"
CONFIG_FILE = "edgeft_trt.json"  # the graph's shapes and names, for the engine builder and the runner
OPSET = 21  # blockwise DequantizeLinear (int4 weight-only) needs opset 21
DTYPES = ("fp32", "fp16")


def kv_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def check_architecture(config: dict, config_path: Path) -> None:
    arch = (config.get("architectures") or [None])[0]
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"architecture {arch!r} is not supported by the tensorrt backend (supported: {', '.join(ARCHITECTURES)})",
            file=config_path, place="architectures")
    if config.get("sliding_window") and config.get("use_sliding_window", True) and arch == "MistralForCausalLM":
        raise UnsupportedArchitecture("sliding-window attention is not supported", file=config_path, place="sliding_window")


class _Decoder:
    """Builds the traced module lazily so importing this file never imports torch."""

    @staticmethod
    def build(model) -> "torch.nn.Module":
        import torch
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        class Decoder(torch.nn.Module):
            def __init__(self, model) -> None:
                super().__init__()
                self.model = model
                cfg = model.config
                self.heads = cfg.num_attention_heads
                self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
                self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

            def forward(self, input_ids, position_ids, *past):
                inner = self.model.model
                h = inner.embed_tokens(input_ids)
                cos, sin = inner.rotary_emb(h, position_ids)
                batch, seq = input_ids.shape
                presents = []
                for i, layer in enumerate(inner.layers):
                    attn = layer.self_attn
                    x = layer.input_layernorm(h)
                    q = attn.q_proj(x).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
                    k = attn.k_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
                    v = attn.v_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
                    q, k = apply_rotary_pos_emb(q, k, cos, sin)
                    k = torch.cat([past[2 * i], k], dim=2)
                    v = torch.cat([past[2 * i + 1], v], dim=2)
                    presents += [k, v]
                    total = k.shape[2]
                    group = self.heads // self.kv_heads
                    if group > 1:  # grouped-query attention: each kv head serves `group` query heads
                        k = k[:, :, None].expand(batch, self.kv_heads, group, total, self.head_dim).reshape(
                            batch, self.heads, total, self.head_dim)
                        v = v[:, :, None].expand(batch, self.kv_heads, group, total, self.head_dim).reshape(
                            batch, self.heads, total, self.head_dim)
                    scores = torch.matmul(q, k.transpose(2, 3)) * (self.head_dim ** -0.5)
                    # causal over the cache: query t (at absolute position past + t) sees keys 0..past + t
                    q_pos = torch.arange(seq, device=h.device)[:, None] + (total - seq)
                    k_pos = torch.arange(total, device=h.device)[None, :]
                    scores = scores.masked_fill(k_pos > q_pos, torch.finfo(scores.dtype).min)
                    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
                    out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim)
                    h = h + attn.o_proj(out)
                    h = h + layer.mlp(layer.post_attention_layernorm(h))
                h = inner.norm(h)
                head = self.model.lm_head.weight
                if head is inner.embed_tokens.weight:  # tied: one table for Gather and the head, stored once
                    logits = torch.nn.functional.linear(h.reshape(batch * seq, -1), head).reshape(batch, seq, -1)
                else:
                    logits = self.model.lm_head(h)
                return (logits.float(), *presents)

        return Decoder(model).eval()


def export(model_dir: Path, out_dir: Path, dtype: str = "fp16", *, marker: dict | None = None) -> Path:
    """Write `<out_dir>/model.onnx` (+ external weights), the tokenizer files and the shapes file,
    atomically. The model is traced in `dtype` itself, so the fp16 graph's constants (the mask's
    fill value) are fp16's own; softmax runs in fp32 and the logits come out fp32 either way."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.progress import quiet_libraries

    if dtype not in DTYPES:
        raise ArtifactError(f"unknown tensorrt export dtype {dtype!r} (known: {', '.join(DTYPES)})", file=model_dir)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    check_architecture(config, config_path)
    quiet_libraries()
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
    decoder = _Decoder.build(model)
    cfg = model.config
    layers = cfg.num_hidden_layers
    kv_heads = decoder.kv_heads
    head_dim = decoder.head_dim
    past_names, present_names = kv_names(layers)
    ids = torch.tensor([[1, 2, 3]], dtype=torch.long)
    pos = torch.tensor([[2, 3, 4]], dtype=torch.long)
    past = [torch.zeros(1, kv_heads, 2, head_dim, dtype=torch_dtype) for _ in past_names]
    axes = {"input_ids": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    import warnings

    with atomic_dir(out_dir) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (deprecated, still shipped): it keeps every axis named in `axes`
        # dynamic, and our decoder avoids transformers' mask code (aten::diff), which it cannot export.
        warnings.simplefilter("ignore", DeprecationWarning)
        raw = tmp / "fp32.onnx"
        torch.onnx.export(decoder, (ids, pos, *past), str(raw), input_names=["input_ids", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes, opset_version=17, dynamo=False)
        _external_data(raw, tmp / MODEL_FILE)
        raw.unlink()
        for extra in tmp.glob("fp32.onnx*"):
            extra.unlink()
        _copy_tokenizer(model_dir, tmp)
        info = {"dtype": dtype, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "heads": decoder.heads,
                "vocab_size": cfg.vocab_size, "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
                "eos_token_id": cfg.eos_token_id, "inputs": ["input_ids", "position_ids", *past_names],
                "outputs": ["logits", *present_names], "architecture": config["architectures"][0]}
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2))
        if marker is not None:
            from edgeft.backends.marker import MARKER

            (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return out_dir


def _share_tied_head(model) -> None:
    """The tracer folds a tied head's transpose into a second copy of the embedding table (a fifth
    of a small model's weights). Put it back as Gemm(h, table, transB=1) over the one table."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    if not gathers:
        return
    table_name = gathers[0].input[0]
    table = numpy_helper.to_array(inits[table_name])
    for i, node in enumerate(model.graph.node):
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is None or tuple(weight.dims) != table.shape[::-1]:
            continue
        if not np.array_equal(numpy_helper.to_array(weight), table.T):
            continue
        gemm = helper.make_node("Gemm", [node.input[0], table_name], list(node.output), name="/lm_head/Gemm", transB=1)
        model.graph.node.remove(node)
        model.graph.node.insert(i, gemm)
        if not any(weight.name in n.input for n in model.graph.node):
            model.graph.initializer.remove(weight)
        return


def _external_data(raw: Path, final: Path) -> None:
    """Weights as one external-data file beside the graph, as TensorRT's parser and ModelOpt read them."""
    import onnx

    model = onnx.load(str(raw))
    _share_tied_head(model)
    onnx.save_model(model, str(final), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=final.name + ".data", size_threshold=1024)


def _copy_tokenizer(model_dir: Path, out: Path) -> None:
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja", "config.json"):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
