"""Tokenizer metadata for GGUF: vocabulary, merges, token types, special ids, chat template.

llama.cpp re-implements each Hugging Face pre-tokenizer under a name
(`tokenizer.ggml.pre`). We read the pre-tokenizer's structure from tokenizer.json and
map it to the llama.cpp name that splits text the same way; a structure we do not know
is refused, because a wrong name silently changes tokenization.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.errors import UnsupportedArchitecture

# Token types as llama.cpp reads them.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass
class GGUFVocab:
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, unk, pad -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    model: str = "gpt2"  # llama.cpp's tokenizer: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    scores: list[float] | None = None  # "llama": merge priority, higher first
    add_space_prefix: bool = False  # "llama": a "▁" before the text, as the HF normalizer prepends


SPACE = "\u2581"  # SentencePiece's visible space
_BYTE_TOKEN = __import__("re").compile(r"^<0x[0-9A-Fa-f]{2}>$")


def spm_layout(data: dict[str, Any], file: str) -> bool:
    """For a SentencePiece-style BPE (byte fallback, spaces as "▁"): whether a "▁" is prepended.
    Only the layouts llama.cpp's `llama` tokenizer reproduces are accepted; others are refused."""
    steps = _steps_of(data.get("normalizer"), "normalizers")
    kinds = [(st.get("type"), (st.get("pattern") or {}).get("String"), st.get("content"), st.get("prepend")) for st in steps]
    replace = ("Replace", " ", SPACE, None)
    if kinds == [replace]:
        prepend = False
    elif kinds == [("Prepend", None, None, SPACE), replace]:
        prepend = True
    else:
        raise UnsupportedArchitecture("a SentencePiece-style normalizer other than spaces to '\u2581' (optionally with one "
                                      "prepended) is not supported", file=file, place="normalizer")
    pre = data.get("pre_tokenizer")
    if pre and not (pre.get("type") == "Split" and (pre.get("pattern") or {}).get("String") == " "
                    and pre.get("behavior") == "MergedWithPrevious"):
        # a split on " " after the normalizer turned every space into "\u2581" splits nothing
        raise UnsupportedArchitecture(f"a SentencePiece-style pre-tokenizer {pre.get('type')} is not supported",
                                      file=file, place="pre_tokenizer")
    return prepend


def _steps_of(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [s for n in node.get(key, []) for s in _steps_of(n, key)]
    return [node]


def spm_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """llama.cpp's `llama` tokenizer merges the adjacent pair whose joined piece scores highest; the
    HF file ranks merges instead. A piece made by merge r scores -r, so the earliest merge wins, as
    in HF; pieces no merge makes (characters, bytes, specials) score 0 and are never merge results."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        rank.setdefault(left + right, r)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def _steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _steps(p)]
    return [pre]


def _split_regex(step: dict[str, Any]) -> str | None:
    pattern = step.get("pattern") or {}
    return pattern.get("Regex") or pattern.get("String")


# llama.cpp pre-tokenizer name -> the tokenizers pre-tokenizer steps that split text identically.
# "starcoder" splits like "smollm"; they differ only in cleaning spaces when decoding.
PRE_TOKENIZER_SHAPES: dict[str, list[tuple[str, Any]]] = {
    "gpt-2": [("ByteLevel", True)],
    "smollm": [("Digits", True), ("ByteLevel", True)],
    "starcoder": [("Digits", True), ("ByteLevel", True)],
    "qwen2": [("Split", _QWEN2_REGEX), ("ByteLevel", False)],
    "llama-bpe": [("Split", _LLAMA3_REGEX), ("ByteLevel", False)],
}


def _shape(pre: dict[str, Any] | None) -> list[tuple[str, Any]]:
    shape: list[tuple[str, Any]] = []
    for s in _steps(pre):
        kind = s.get("type")
        if kind == "ByteLevel":
            shape.append(("ByteLevel", bool(s.get("use_regex", True))))
        elif kind == "Digits":
            shape.append(("Digits", bool(s.get("individual_digits", False))))
        elif kind == "Split":
            shape.append(("Split", _split_regex(s)))
        else:
            shape.append((str(kind), None))
    return shape


def detect_pre_tokenizer(tokenizer_json: dict[str, Any], clean_up_spaces: bool, file: str) -> str:
    """Map a tokenizer.json pre-tokenizer to the llama.cpp pre-tokenizer name that splits identically."""
    shape = _shape(tokenizer_json.get("pre_tokenizer"))
    matches = [name for name, known in PRE_TOKENIZER_SHAPES.items() if known == shape]
    if matches:
        if set(matches) == {"smollm", "starcoder"}:
            return "starcoder" if clean_up_spaces else "smollm"
        return matches[0]
    described = " + ".join(f"{k}({v})" if v is not None else str(k) for k, v in shape) or "none"
    raise UnsupportedArchitecture(
        f"pre-tokenizer {described} has no llama.cpp equivalent we know "
        "(supported: GPT-2 byte-level, byte-level with single digits, Qwen2, Llama 3)",
        file=file,
        place="pre_tokenizer",
    )


def build_pre_tokenizer(name: str) -> Any | None:
    """The tokenizers pre-tokenizer for a llama.cpp pre-tokenizer name, or None for a name we do not know.

    transformers' GGUF loader rebuilds every byte-level tokenizer with the plain GPT-2 split,
    whatever `tokenizer.ggml.pre` says; this restores the split llama.cpp actually uses."""
    from tokenizers import Regex, pre_tokenizers

    shape = PRE_TOKENIZER_SHAPES.get(name)
    if shape is None:
        return None
    steps = []
    for kind, arg in shape:
        if kind == "ByteLevel":
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=arg))
        elif kind == "Digits":
            steps.append(pre_tokenizers.Digits(individual_digits=arg))
        else:
            steps.append(pre_tokenizers.Split(Regex(arg), behavior="isolated", invert=False))
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def _merges(model: dict[str, Any]) -> list[str]:
    merges = model.get("merges") or []
    return [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in merges]


def read_vocab(model_dir: Path, n_vocab: int) -> GGUFVocab:
    """Read the HF tokenizer beside a model into GGUF vocabulary metadata of exactly n_vocab entries."""
    from transformers import AutoTokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedArchitecture("no tokenizer.json: only fast (tokenizers) BPE tokenizers can be converted", file=model_dir)
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedArchitecture(f"tokenizer model {model.get('type')} is not supported "
                                      "(supported: byte-level BPE, SentencePiece-style BPE with byte fallback)",
                                      file=path, place="model.type")
    spm = bool(model.get("byte_fallback"))

    tok = AutoTokenizer.from_pretrained(model_dir)
    if spm:
        prepend = spm_layout(data, str(path))
        pre = "default"
    else:
        pre = detect_pre_tokenizer(data, bool(getattr(tok, "clean_up_tokenization_spaces", False)), str(path))

    vocab = tok.get_vocab()
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    if max(by_id) >= n_vocab:
        raise UnsupportedArchitecture(
            f"tokenizer has id {max(by_id)} but the embedding has only {n_vocab} rows", file=path
        )
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in by_id:
            # Embedding rows beyond the tokenizer (padding for alignment) still need a token entry.
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif spm and _BYTE_TOKEN.match(by_id[i]):
            tokens.append(by_id[i])
            types.append(BYTE)
        elif spm and by_id[i] == model.get("unk_token"):
            tokens.append(by_id[i])
            types.append(UNKNOWN)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)

    special_ids = {}
    for name in ("bos", "eos", "unk", "pad"):
        value = getattr(tok, f"{name}_token_id", None)
        if value is not None:
            special_ids[name] = int(value)

    # Whether encoding adds BOS/EOS is observed, not guessed from config flags that vary by model.
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    add_bos = "bos" in special_ids and len(full) > len(plain) and full[0] == special_ids["bos"]
    add_eos = "eos" in special_ids and len(full) > len(plain) and full[-1] == special_ids["eos"]

    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)

    merges = _merges(model)
    return GGUFVocab(
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=[] if spm else merges,
        special_ids=special_ids,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template,
        model="llama" if spm else "gpt2",
        scores=spm_scores(tokens, merges) if spm else None,
        add_space_prefix=spm and prepend,
    )


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for name, value in vocab.special_ids.items():
        setters[name](value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
