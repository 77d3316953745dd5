"""Vocabulary trimming: keep the tokens a task uses, rewrite the tokenizer, the embedding and the head.

An app that speaks one or two languages ships (and, in the head, computes for every decoded token)
a vocabulary it never uses. The trimmed tokenizer must tokenize the task's text exactly as the full
one does, up to renumbering, and must still encode any other text. Both follow from what is kept:

- every token the task text tokenizes to;
- every token a merge passes through on the way to one of those. A token that appears in a word's
  tokenization was built from its own characters alone (no merge crossed its edges), so the merges
  that built it are those of BPE run on the token's own string; replaying that gives the closure;
- every byte token and every added (special) token, so that any string stays encodable.

A merge is kept when its two parts and its result are kept. On the task's text every merge that
fires is kept, and at each step the merge BPE picks (the lowest rank applicable) is still applicable
and still the lowest among a subset, so the tokenization is identical. Other text falls back to
shorter pieces: single characters, then bytes (byte-level BPE's 256 characters, or <0xNN> tokens
with byte fallback).

New ids keep the old order: new id i is old id `kept[i]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from edgeft.errors import EdgeftError, UnsupportedArchitecture

MAP_NAME = "vocab_map.json"


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model.get("merges") or []]


def read_map(folder: Path) -> dict[str, Any] | None:
    """A trimmed folder's vocab_map.json (`kept`, the untrimmed `source`, the sizes); None for any other folder."""
    path = Path(folder) / MAP_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_tokenizer(hf_dir: Path) -> dict[str, Any]:
    """A folder's tokenizer.json, parsed once and checked to be a BPE that trimming supports."""
    path = Path(hf_dir) / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedArchitecture("no tokenizer.json: vocabulary trimming needs a fast (tokenizers) tokenizer", file=hf_dir)
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedArchitecture(f"vocabulary trimming needs a BPE tokenizer, not {model.get('type')}", file=path,
                                      place="model.type")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise UnsupportedArchitecture(f"vocabulary trimming does not support a BPE {key}", file=path, place=f"model.{key}")
    if model.get("dropout"):
        raise UnsupportedArchitecture("vocabulary trimming needs deterministic BPE (dropout is set)", file=path,
                                      place="model.dropout")
    return data


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """BPE on `word`: its final symbols, and every symbol it passed through (characters, then each merge's result)."""
    symbols = list(word)
    seen = list(symbols)
    while len(symbols) > 1:
        best, at = None, -1
        for i in range(len(symbols) - 1):
            r = ranks.get((symbols[i], symbols[i + 1]))
            if r is not None and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        merged = symbols[at] + symbols[at + 1]
        symbols[at:at + 2] = [merged]
        seen.append(merged)
    return symbols, seen


def bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Every symbol BPE passes through on `word` (its characters, each merge's result), in order."""
    return _bpe(word, ranks)[1]


def _ranks(model: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {pair: r for r, pair in reversed(list(enumerate(_merge_pairs(model))))}


def _always_kept(data: dict[str, Any], model: dict[str, Any]) -> set[int]:
    """Added tokens, the unknown token, and the byte tokens: what keeps every string encodable."""
    vocab: dict[str, int] = model["vocab"]
    ids = {int(a["id"]) for a in data.get("added_tokens", [])}
    if model.get("unk_token") in vocab:
        ids.add(vocab[model["unk_token"]])
    if model.get("byte_fallback"):
        ids.update(vocab[t] for t in (f"<0x{b:02X}>" for b in range(256)) if t in vocab)
    else:  # byte-level BPE: the 256 characters bytes are mapped to
        from tokenizers import pre_tokenizers

        ids.update(vocab[c] for c in pre_tokenizers.ByteLevel.alphabet() if c in vocab)
    return ids


def closure(data: dict[str, Any], seen_ids: Iterable[int]) -> list[int]:
    """The ids to keep for text that tokenized to `seen_ids`, sorted: see the module docstring.
    `data` is `read_tokenizer`'s."""
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    ranks = _ranks(model)
    keep = _always_kept(data, model)
    for i in set(int(i) for i in seen_ids):
        keep.add(i)
        token = by_id.get(i)
        if token is None:  # an added token outside the model's vocabulary
            continue
        for piece in bpe_pieces(token, ranks):
            if piece in vocab:
                keep.add(vocab[piece])
    return sorted(keep)


def first_n(data: dict[str, Any], n: int) -> list[int]:
    """`--trim-vocab N`: the always-kept tokens, then merge results in merge order (the most frequent
    pairs of the tokenizer's training text first) while both parts are kept, up to N tokens."""
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    keep = _always_kept(data, model)
    if model.get("byte_fallback"):  # single characters are the starting symbols of SentencePiece-style BPE
        keep.update(i for t, i in vocab.items() if len(t) == 1)
    if n < len(keep):
        raise EdgeftError(f"{n} tokens cannot hold the {len(keep)} byte, character and special tokens every string needs",
                          place="--trim-vocab")
    kept_tokens = {t for t, i in vocab.items() if i in keep}
    for left, right in _merge_pairs(model):
        if len(keep) >= n:
            break
        result = left + right
        if left in kept_tokens and right in kept_tokens and result in vocab and result not in kept_tokens:
            kept_tokens.add(result)
            keep.add(vocab[result])
    return sorted(keep)


def _remap_ids(node: Any, old_to_new: dict[int, int]) -> Any:
    """A post-processor with its special tokens' ids renumbered (TemplateProcessing's "ids", Bert/Roberta's pairs)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ids" and isinstance(v, list):
                out[k] = [old_to_new[int(i)] for i in v]
            elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                out[k] = [v[0], old_to_new[v[1]]]
            else:
                out[k] = _remap_ids(v, old_to_new)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, old_to_new) for v in node]
    return node


def trimmed_tokenizer(data: dict[str, Any], kept: list[int]) -> dict[str, Any]:
    """tokenizer.json with only `kept` (old ids, sorted), renumbered in order, and the merges among them."""
    old_to_new = {old: new for new, old in enumerate(kept)}
    model = dict(data["model"])
    vocab = {t: old_to_new[i] for t, i in model["vocab"].items() if i in old_to_new}
    merges = [[a, b] for a, b in _merge_pairs(model) if a in vocab and b in vocab and a + b in vocab]
    model.update(vocab=vocab, merges=merges)
    out = dict(data, model=model)
    out["added_tokens"] = [dict(a, id=old_to_new[int(a["id"])]) for a in data.get("added_tokens", [])]
    if data.get("post_processor"):
        out["post_processor"] = _remap_ids(data["post_processor"], old_to_new)
    return out


def _config_updates(config: dict[str, Any], old_to_new: dict[int, int], n: int) -> dict[str, Any]:
    """A config's `*_token_id(s)` renumbered (an id that was dropped becomes None) and its vocabulary size."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not (key.endswith("_token_id") or key.endswith("_token_ids")):
            continue
        if isinstance(value, int):
            out[key] = old_to_new.get(value)
        elif isinstance(value, list):
            out[key] = [old_to_new[v] for v in value if v in old_to_new]
    if "vocab_size" in config:
        out["vocab_size"] = n
    return out


def trim_model(hf_dir: Path, data: dict[str, Any], kept: list[int], out_dir: Path) -> dict[str, Any]:
    """Write `hf_dir` (whose `read_tokenizer` is `data`) with only the `kept` token ids into `out_dir` (atomically): tokenizer,
    embedding rows, head rows (tied or not) and config ids. Returns the map recorded beside it,
    which names the untrimmed folder: quality is judged against that model (`bench/source_model.py`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.atomic_io import atomic_dir, write_json
    from edgeft.progress import quiet_libraries

    quiet_libraries()
    hf_dir = Path(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto")
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    full = int(emb.weight.shape[0])
    if kept and kept[-1] >= full:
        raise EdgeftError(f"token id {kept[-1]} is outside the embedding's {full} rows", file=hf_dir)
    tied = head is not None and head.weight is emb.weight
    index = torch.tensor(kept, dtype=torch.long)
    with torch.no_grad():
        emb.weight = torch.nn.Parameter(emb.weight.detach()[index].clone())
        emb.num_embeddings = len(kept)
        if head is not None:
            if tied:
                head.weight = emb.weight
            else:
                head.weight = torch.nn.Parameter(head.weight.detach()[index].clone())
                if getattr(head, "bias", None) is not None:
                    head.bias = torch.nn.Parameter(head.bias.detach()[index].clone())
            head.out_features = len(kept)
    old_to_new = {old: new for new, old in enumerate(kept)}
    if getattr(emb, "padding_idx", None) is not None:
        emb.padding_idx = old_to_new.get(emb.padding_idx)
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None:
            for key, value in _config_updates(config.to_dict(), old_to_new, len(kept)).items():
                setattr(config, key, value)
    record = {"source": str(hf_dir.resolve()), "source_vocab": full, "kept_vocab": len(kept), "kept": kept}
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp)
        for f in hf_dir.iterdir():  # tokenizer_config.json, chat template, special tokens map: by content, not id
            if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "chat_template")) and f.name != "tokenizer.json":
                (tmp / f.name).write_bytes(f.read_bytes())
        (tmp / "tokenizer.json").write_text(json.dumps(trimmed_tokenizer(data, kept), ensure_ascii=False), encoding="utf-8")
        write_json(tmp / MAP_NAME, record)
    return record


class Renumber:
    """Full-vocabulary ids to trimmed ids, for records tokenized before the trim (distillation data).

    A kept id is renumbered. A dropped one is re-encoded from its own string with the kept merges,
    falling back to byte tokens: the same text, in the pieces the trimmed vocabulary has (for text
    whose tokens were all kept, exactly the trimmed tokenizer's ids)."""

    def __init__(self, data: dict[str, Any], kept: list[int]):
        self.old_to_new = {old: new for new, old in enumerate(kept)}
        trimmed = trimmed_tokenizer(data, kept)["model"]
        self.vocab: dict[str, int] = trimmed["vocab"]
        self.ranks = _ranks(trimmed)
        self.token = {i: t for t, i in data["model"]["vocab"].items()}
        self.byte_fallback = bool(data["model"].get("byte_fallback"))

    @classmethod
    def for_trimmed(cls, trimmed_dir: Path) -> "Renumber":
        """The renumbering into a trimmed folder's ids, from its map and its untrimmed source's tokenizer."""
        record = read_map(trimmed_dir)
        if record is None:
            raise RuntimeError(f"{trimmed_dir} is not a trimmed folder (no {MAP_NAME})")
        return cls(read_tokenizer(Path(record["source"])), record["kept"])

    def __call__(self, old_id: int) -> list[int]:
        if old_id in self.old_to_new:
            return [self.old_to_new[old_id]]
        out: list[int] = []
        for piece in _bpe(self.token[old_id], self.ranks)[0]:
            if piece in self.vocab:
                out.append(self.vocab[piece])
            elif self.byte_fallback:
                out.extend(self.vocab[f"<0x{b:02X}>"] for b in piece.encode("utf-8"))
            else:  # byte-level BPE keeps all 256 byte characters, so every piece is in the vocabulary
                raise RuntimeError(f"token {old_id} ({self.token[old_id]!r}) has a piece the trimmed vocabulary lacks")
        return out


def renumber_records(src: Path, dst: Path, renumber: Renumber) -> None:
    """One prepared JSONL (input_ids, labels, attention_mask) in trimmed ids, padding dropped (batches
    re-pad). A dropped token's pieces take its label when it had one; a file without labels (an
    evaluation file) keeps none."""
    from edgeft.distill.records import IGNORE

    with open(src, encoding="utf-8") as fh, open(dst, "w", encoding="utf-8") as out:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            tokens = row["input_ids"]
            mask = row.get("attention_mask") or [1] * len(tokens)
            labels = row.get("labels")
            ids: list[int] = []
            new_labels: list[int] = []
            for n, (token, m) in enumerate(zip(tokens, mask)):
                if not m:
                    continue
                pieces = renumber(token)
                ids += pieces
                if labels is not None:
                    if labels[n] not in (IGNORE, token):
                        raise RuntimeError(f"{src}: a label that is not its position's token ({labels[n]} at {token})")
                    new_labels += [IGNORE] * len(pieces) if labels[n] == IGNORE else pieces
            out.write(json.dumps({"input_ids": ids, **({"labels": new_labels} if labels is not None else {})}) + "\n")


def renumber_prepared(src: Path, dst: Path, trimmed_dir: Path) -> None:
    """A prepared data folder (train.jsonl, eval.jsonl) in `trimmed_dir`'s ids, written atomically."""
    from edgeft.atomic_io import atomic_dir
    from edgeft.distill.records import open_prepared

    renumber = Renumber.for_trimmed(trimmed_dir)
    splits = open_prepared(Path(src))
    with atomic_dir(Path(dst)) as tmp:
        for path in (splits.train, splits.eval):
            renumber_records(path, tmp / path.name, renumber)


def renumber_eval_file(src: Path, dst: Path, trimmed_dir: Path) -> Path:
    """An evaluation JSONL in the untrimmed model's ids (a data stage's split) in a trimmed folder's
    ids, written atomically; checked first, so a bad file is one line naming it."""
    from edgeft.atomic_io import atomic_path
    from edgeft.bench.perplexity import read_eval_data

    read_eval_data(Path(src))
    renumber = Renumber.for_trimmed(trimmed_dir)
    with atomic_path(Path(dst)) as tmp:
        renumber_records(Path(src), tmp, renumber)
    return Path(dst)


def check_same(full_tok, trimmed_tok, kept: list[int], texts: Iterable[str]) -> int:
    """The required property on `texts`: the trimmed ids are the full ids renumbered. Returns the
    number of tokens checked. A difference is our bug, not the user's input: an internal error."""
    checked = 0
    for text in texts:
        full = full_tok(text, add_special_tokens=False)["input_ids"]
        mine = trimmed_tok(text, add_special_tokens=False)["input_ids"]
        if [kept[i] for i in mine] != full:
            raise RuntimeError(f"the trimmed tokenizer splits {text[:40]!r} differently from the full one")
        checked += len(full)
    return checked


def parse_trim(value: str) -> "int | Path":
    """`--trim-vocab`'s value: a count (digits) or a data file."""
    return int(value) if value.isdigit() else Path(value)


def kept_for(trim: "int | Path", data: dict[str, Any], prepared_ids: "Iterable[Iterable[int]]") -> list[int]:
    """`--trim-vocab N` (the first N) or the closure of the prepared task data's token ids."""
    if isinstance(trim, int):
        return first_n(data, trim)
    return closure(data, {i for ids in prepared_ids for i in ids})


def data_token_ids(data_file: Path, hf_dir: Path, config: Any) -> list[list[int]]:
    """Every usable record's templated prompt and its own target, as the full tokenizer splits them:
    the task text a trim keeps even where the teacher answered only some records (a preset's
    synthesis cap). `config` is the data stage's `DataConfig`."""
    from transformers import AutoTokenizer

    from edgeft.data.prepare import analyze
    from edgeft.data.tokenize import Templater

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    records = analyze(Path(data_file), lambda: tokenizer, config).records
    targets = Templater(tokenizer, config.plain_format).encode_texts([r.target for r in records if r.target])
    return [list(r.prompt_ids or ()) for r in records] + targets


def prepared_token_ids(folder: Path) -> Iterable[list[int]]:
    """Every record's input ids, both splits, of a prepared data folder (chat template included)."""
    from edgeft.distill.records import open_prepared

    splits = open_prepared(Path(folder))
    for path in (splits.train, splits.eval):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)["input_ids"]
