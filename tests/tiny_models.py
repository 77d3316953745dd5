"""Tiny random models and tokenizers built inside tests: no downloads, seconds to make."""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Edge devices run small language models with quantized weights.",
    "天气很好，我们去公园散步吧。机器学习模型在手机上运行。",
    "Hello, world! How are you today? I'm fine, thanks; and you?",
    "   spaces   and\ttabs\n\nnew lines   ",
    "Émoji 🙂🚀 and accents: café, naïve, über, 東京.",
] * 20

QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def make_spm_tokenizer(out: Path, *, prepend: bool = False, vocab_size: int = 600) -> "object":
    """A SentencePiece-style BPE (Gemma, Llama 2, Mistral): spaces become "\u2581" (with one prepended
    when `prepend`, as Llama 2 does), no pre-tokenizer, and byte fallback through the 256 tokens
    <0x00>..<0xFF> for every character the merges do not cover."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    steps = ([normalizers.Prepend("\u2581")] if prepend else []) + [normalizers.Replace(" ", "\u2581")]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Sequence(steps)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    trainer_tok.train_from_iterator([t for t in CORPUS if all(ord(c) < 0x3000 for c in t)], trainer=trainer)
    trained = trainer_tok.get_vocab()
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if prepend else []))
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", clean_up_tokenization_spaces=False)
    fast.chat_template = CHATML
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def make_tokenizer(out: Path, *, style: str = "gpt2", vocab_size: int = 384) -> "object":
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer in `out`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif style == "digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    elif style == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ValueError(style)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def tiny_llama(out: Path, *, tie: bool = True, seed: int = 0, hidden: int = 64, layers: int = 2, extra_vocab: int = 0,
               tokenizer_style: str = "gpt2", positions: int = 256) -> Path:
    """A seeded random LlamaForCausalLM (GQA: 4 query heads, 2 KV heads) with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(out, style=tokenizer_style)
    shape = {**_shape(tok, hidden, layers), "vocab_size": len(tok) + extra_vocab, "max_position_embeddings": positions}
    return _build(out, LlamaConfig, LlamaForCausalLM, seed, tok, **shape, rms_norm_eps=1e-5, tie_word_embeddings=tie)


def tiny_qwen2(out: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, extra_vocab: int = 32) -> Path:
    """A seeded random Qwen2ForCausalLM (attention biases, untied head, padded vocabulary)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = make_tokenizer(out, style="qwen2")
    shape = {**_shape(tok, hidden, layers), "vocab_size": len(tok) + extra_vocab}
    return _build(out, Qwen2Config, Qwen2ForCausalLM, seed, tok, **shape, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _spread_weights(model: "object", seed: int) -> None:
    """Default init leaves biases at zero and norms at one; randomize them so a wrong layout shows up."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)


def tiny_profile(folder: Path, *, backend: str = "gguf", quant: str = "q8_0", runs: int = 3, bench_extra: str = "",
                 budget: str = "package_mb = 350", extra: str = "", name: str = "tiny.toml", context: int = 128) -> Path:
    """A target profile sized for tiny models: 16 prompt tokens, 8 new, one thread, a short context."""
    path = folder / name
    path.write_text(
        f'backend = "{backend}"\nquant = "{quant}"\nthreads = 1\n'
        f"[bench]\nprompt_tokens = 16\nnew_tokens = 8\nruns = {runs}\nwarmup = 1\ncontext = {context}\n{bench_extra}"
        f"[budget]\n{budget}\n{extra}"
    )
    return path


def write_jsonl(path: Path, rows) -> Path:
    """Rows as a UTF-8 JSONL file (the data stage's input format); returns the path."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _shape(tok, hidden: int, layers: int) -> dict:
    """What every tiny decoder shares: 4 query heads on 2 KV heads (GQA), a 2x MLP, 256 positions."""
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def _build(out: Path, config_cls, model_cls, seed: int, tok, **config) -> Path:
    import torch

    torch.manual_seed(seed)
    model = model_cls(config_cls(**config))
    _spread_weights(model, seed)
    model.save_pretrained(out)
    return out


def tiny_qwen3(out: Path, *, seed: int = 0, hidden: int = 256, layers: int = 2) -> Path:
    """A seeded random Qwen3ForCausalLM: per-head q/k norms, no biases, tied head, and 256 wide so
    that llama.cpp writes real K-quant blocks for it (narrower rows fall back to legacy types)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = make_tokenizer(out, style="qwen2")
    return _build(out, Qwen3Config, Qwen3ForCausalLM, seed, tok, **_shape(tok, hidden, layers), head_dim=hidden // 4,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)


def tiny_mistral(out: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A seeded random MistralForCausalLM without a sliding window (GQA, untied head)."""
    from transformers import MistralConfig, MistralForCausalLM

    tok = make_tokenizer(out)
    return _build(out, MistralConfig, MistralForCausalLM, seed, tok, **_shape(tok, hidden, layers), rms_norm_eps=1e-5,
                  sliding_window=None, tie_word_embeddings=False)


def tiny_phi3(out: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, partial_rotary_factor: float = 1.0) -> Path:
    """A seeded random Phi3ForCausalLM: fused qkv and gate_up projections, GQA, untied head."""
    from transformers import Phi3Config, Phi3ForCausalLM

    tok = make_tokenizer(out)
    return _build(out, Phi3Config, Phi3ForCausalLM, seed, tok, **_shape(tok, hidden, layers), original_max_position_embeddings=256,
                  rms_norm_eps=1e-5, sliding_window=None, partial_rotary_factor=partial_rotary_factor,
                  tie_word_embeddings=False, pad_token_id=tok.pad_token_id)


def tiny_gemma3(out: Path, *, seed: int = 0, hidden: int = 64, layers: int = 6, sliding_window: int = 16) -> Path:
    """A seeded random Gemma3ForCausalLM (text only): six layers so that the sixth is global and the
    rest use a 16-token sliding window, (1 + w) norms, q/k norms, two rope bases, a tied head, and a
    SentencePiece-style tokenizer with byte fallback, as Gemma has."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = make_spm_tokenizer(out)
    return _build(out, Gemma3TextConfig, Gemma3ForCausalLM, seed, tok, **_shape(tok, hidden, layers), head_dim=hidden // 4,
                  query_pre_attn_scalar=hidden // 4, sliding_window=sliding_window, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
