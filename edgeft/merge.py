"""LoRA adapters + their base -> one dense Hugging Face folder (safetensors, config, tokenizer).

A 4-bit base is dequantized exactly as training saw it (the same NF4 engine, bitsandbytes or
torchao, quantizing the same weights and dequantizing them its own way), the adapters are added
to it in fp32, and the result is cast to the output dtype. Merging into the original fp32 weights instead would ship a model the adapters were
never trained against."""

from __future__ import annotations

import json
from pathlib import Path

from edgeft.atomic_io import atomic_dir
from edgeft.distill.config import NF4_ENGINES
from edgeft.errors import ArtifactError, ConfigError

DTYPES = ("float16", "float32", "bfloat16")
ADAPTER_META = "edgeft_adapter.json"


def read_adapter_meta(adapter_dir: Path) -> dict:
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ArtifactError("no such adapter folder", file=adapter_dir)
    for name in ("adapter_config.json", ADAPTER_META):
        if not (adapter_dir / name).is_file():
            raise ArtifactError(f"not an edgeft adapter folder: {name} is missing", file=adapter_dir)
    try:
        meta = json.loads((adapter_dir / ADAPTER_META).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"invalid JSON: {exc.msg}", file=adapter_dir / ADAPTER_META, place=f"line {exc.lineno}") from None
    base = Path(meta.get("student_dir", ""))
    if not (base / "config.json").is_file():
        raise ArtifactError(f"the adapter's base model folder {base} is missing", file=adapter_dir / ADAPTER_META, place="student_dir")
    engines = [e for e in NF4_ENGINES if e != "auto"]  # training records the engine that ran, never "auto"
    if meta.get("quantized_base") and nf4_engine(meta) not in engines:
        raise ArtifactError(f"unknown NF4 engine {meta['nf4_engine']!r} (known: {', '.join(engines)})",
                            file=adapter_dir / ADAPTER_META, place="nf4_engine")
    return meta


def nf4_engine(meta: dict) -> str | None:
    """The engine that quantized the adapter's base; None for an fp32 base. Adapters written before
    the engine was recorded were all trained on bitsandbytes."""
    if not meta.get("quantized_base"):
        return None
    return meta.get("nf4_engine") or "bitsandbytes"


def dense_base(student_dir: Path, engine: str | None):
    """The base as a dense fp32 model: as stored (engine None), or with every 4-bit layer's NF4
    weights, quantized by `engine` as at training (see `nf4_engine`), dequantized."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.distill import qlora

    dense = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    if engine is not None:
        q = qlora.load_base(student_dir, quantize=True, engine=engine)
        weights = qlora.dequantized_state(q)
        modules = dict(dense.named_modules())
        with torch.no_grad():
            for name, w in weights.items():
                modules[name].weight.copy_(w.reshape(modules[name].weight.shape))
        del q
    return dense


def adapter_model(adapter_dir: Path):
    """The model training produced (4-bit or fp32 base + adapters), for parity checks."""
    from edgeft.distill import qlora

    meta = read_adapter_meta(adapter_dir)
    engine = nf4_engine(meta)
    student_dir = Path(meta["student_dir"])
    base = qlora.load_base(student_dir, quantize=False) if engine is None else qlora.load_base(student_dir, True, engine)
    return qlora.load_adapter(base, adapter_dir).eval()


def merge(adapter_dir: Path, out_dir: Path, dtype: str = "float16") -> Path:
    """Write the merged dense model to `out_dir` (atomically) and return it."""
    import torch
    from transformers import AutoTokenizer

    from edgeft.distill import qlora
    from edgeft.progress import quiet_libraries

    quiet_libraries()  # transformers' loading and shard-writing bars are its noise, not our progress

    if dtype not in DTYPES:
        raise ConfigError([("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")])
    adapter_dir = Path(adapter_dir)
    meta = read_adapter_meta(adapter_dir)
    student_dir = Path(meta["student_dir"])
    engine = nf4_engine(meta)
    dense = dense_base(student_dir, engine)
    merged = qlora.load_adapter(dense, adapter_dir).merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    merged.config.dtype = dtype
    tok = AutoTokenizer.from_pretrained(student_dir)
    with atomic_dir(Path(out_dir)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "edgeft_merge.json").write_text(json.dumps({"adapter": str(adapter_dir.resolve()), "base": str(student_dir),
                                                           "dequantized_nf4_base": engine is not None, "nf4_engine": engine,
                                                           "dtype": dtype}, indent=2) + "\n")
    return Path(out_dir)
