"""Hugging Face folder -> GGUF file (f32, f16 or bf16), written with the `gguf` package's writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from edgeft.atomic_io import atomic_path
from edgeft.backends.gguf.arch import family_for
from edgeft.backends.gguf.tokenizer import read_vocab, write_vocab
from edgeft.errors import ModelSourceError

OUT_DTYPES = ("f32", "f16", "bf16")


def _iter_tensors(model_dir: Path) -> Iterator[tuple[str, "object"]]:
    """Yield (name, float32 numpy array) one tensor at a time, so peak memory stays near one copy of the model."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelSourceError("no *.safetensors weights to convert", file=model_dir)
    for f in files:
        try:
            with safe_open(f, framework="pt") as fh:
                for name in fh.keys():
                    yield name, fh.get_tensor(name).float().numpy()
        except ModelSourceError:
            raise
        except Exception as exc:
            raise ModelSourceError(f"cannot read weights ({type(exc).__name__}: {exc})", file=f) from None


def convert(model_dir: Path, out_path: Path, out_dtype: str = "f16", *, name: str | None = None, quiet: bool = False) -> Path:
    """Write `out_path` (atomically) from the HF folder `model_dir`."""
    import gguf
    import numpy as np

    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    family = family_for(config, str(config_path))

    tensors: list[tuple[str, np.ndarray]] = []
    for hf_name, array in _iter_tensors(model_dir):
        gguf_name = family.gguf_name(hf_name)
        if gguf_name is None:
            continue
        tensors.append((gguf_name, family.transform(gguf_name, array)))
    tensors += family.extra_tensors()
    names = {n for n, _ in tensors}
    if "token_embd.weight" not in names:
        raise ModelSourceError("weights lack model.embed_tokens.weight", file=model_dir)
    if "output.weight" not in names and not family.tied:
        raise ModelSourceError("weights lack lm_head.weight and embeddings are not tied", file=model_dir)
    n_vocab = dict(tensors)["token_embd.weight"].shape[0]
    vocab = read_vocab(model_dir, n_vocab)

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}[out_dtype]
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, family.gguf_arch)
        writer.add_type("model")
        writer.add_name(name or model_dir.name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        family.write_hparams(writer, n_vocab)
        write_vocab(writer, vocab)
        for gguf_name, array in tensors:
            # Norms and biases stay f32, as llama.cpp expects; matrices take the output dtype.
            if array.ndim == 1 or out_dtype == "f32":
                writer.add_tensor(gguf_name, array.astype(np.float32))
            elif out_dtype == "f16":
                writer.add_tensor(gguf_name, array.astype(np.float16))
            else:
                packed = gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.BF16)
                writer.add_tensor(gguf_name, packed, raw_dtype=gguf.GGMLQuantizationType.BF16)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
    return out_path
