"""A peft LoRA adapter as a GGUF adapter file, which llama.cpp loads beside its base and switches at run time.

The format (llama.cpp's documentation and converter are where the facts come from; the code is
ours): `general.type` "adapter", `adapter.type` "lora", `adapter.lora.alpha`, and for each adapted
matrix two tensors named after the base's GGUF tensor, `<name>.lora_a` (A, rank x in) and
`<name>.lora_b` (B, out x rank). llama.cpp adds `scale * alpha / rank * B @ A` to that matrix's
product, so a peft adapter scaled by `alpha / sqrt(rank)` (rsLoRA) is written with alpha times
sqrt(rank). Rows a family reorders in the base (Llama's rotary halves of q and k) are reordered in B
the same way: B's rows are the matrix's output rows.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from edgeft.atomic_io import atomic_path
from edgeft.backends.gguf.arch import family_for
from edgeft.errors import EdgeftError

# LoRA A and B are written as f16, as the base's unquantized export is: half the bytes of f32 for each
# task adapter a phone downloads, and llama.cpp multiplies f16 adapters as it does f16 weights. The
# bench's proof (`tasks.measure.proof`) holds every shipped adapter to the merged weights within
# PROOF_KL_MAX, f16 rounding included (benchmarks/README.md, "adapters at f16").
ADAPTER_DTYPE = "float16"
_PEFT_NAME = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def adapter_tensors(adapter_dir: Path) -> dict[str, dict[str, "object"]]:
    """{HF weight name: {"A": array, "B": array}} of a peft adapter folder (float32 numpy)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise EdgeftError("not a LoRA adapter folder (no adapter_model.safetensors)", file=adapter_dir)
    pairs: dict[str, dict[str, object]] = {}
    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():
            m = _PEFT_NAME.match(name)
            if m is None:
                raise EdgeftError(f"tensor {name!r} is not a LoRA A or B matrix (only LoRA on linear layers is "
                                  "exported; embeddings and saved modules are not)", file=path)
            pairs.setdefault(f"{m.group(1)}.weight", {})[m.group(2)] = fh.get_tensor(name).float().numpy()
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise EdgeftError(f"{name} has only lora_{''.join(ab)}", file=path)
    return pairs


def adapter_alpha(adapter_dir: Path) -> tuple[float, int]:
    """(the alpha llama.cpp must be given, rank) from adapter_config.json."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise EdgeftError("not a LoRA adapter folder (no adapter_config.json)", file=adapter_dir)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeftError(f"cannot read the adapter's config ({exc})", file=path) from None
    if config.get("peft_type", "LORA") != "LORA":
        raise EdgeftError(f"a {config.get('peft_type')} adapter is not a LoRA adapter", file=path, place="peft_type")
    for key in ("use_dora", "rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise EdgeftError(f"{key} is not supported by llama.cpp's LoRA adapters", file=path, place=key)
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    return (alpha * math.sqrt(rank) if config.get("use_rslora") else alpha), rank


# Our own key in the adapter file: the sha256 of the shipped base GGUF it was exported for. llama.cpp
# reads only its own keys, so the file still loads anywhere; we refuse it beside another base.
BASE_SHA256_KEY = "edgeft.base.sha256"


def check_base(adapter: Path, base: Path) -> None:
    """An adapter must have been exported for this very base file (its sha256): llama.cpp itself checks
    only the architecture and tensor shapes, so another base of the same shape would load silently."""
    from edgeft.backends.gguf.backend import check_gguf_file
    from edgeft.backends.gguf.header import read_header
    from edgeft.errors import ArtifactError
    from edgeft.manifest import sha256

    check_gguf_file(Path(adapter))
    recorded = read_header(Path(adapter)).fields.get(BASE_SHA256_KEY)
    if recorded is None:
        raise ArtifactError(f"no {BASE_SHA256_KEY}: not an adapter edgeft exported for a base, so nothing says which "
                            "base it belongs to", file=adapter)
    actual = sha256(Path(base))
    if recorded != actual:
        raise ArtifactError(f"this adapter was exported for another base (sha256 {str(recorded)[:12]}...), not "
                            f"{Path(base).name} (sha256 {actual[:12]}...)", file=adapter)


def export_lora(adapter_dir: Path, base_hf_dir: Path, out_path: Path, *, base_sha256: str | None = None) -> Path:
    """Write `out_path` (atomically): the adapter in `adapter_dir`, trained on `base_hf_dir`, as GGUF;
    `base_sha256` names the shipped base file it belongs to (`check_base`)."""
    import gguf
    import numpy as np

    config_path = Path(base_hf_dir) / "config.json"
    family = family_for(json.loads(config_path.read_text(encoding="utf-8")), str(config_path))
    pairs = adapter_tensors(adapter_dir)
    alpha, rank = adapter_alpha(adapter_dir)
    tensors: list[tuple[str, np.ndarray]] = []
    for hf_name, ab in sorted(pairs.items()):
        gguf_name = family.gguf_name(hf_name)
        if gguf_name is None:
            raise EdgeftError(f"the adapter changes {hf_name}, which the GGUF base does not store separately "
                              "(a tied head)", file=adapter_dir)
        a, b = ab["A"], ab["B"]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise EdgeftError(f"{hf_name}: rank {a.shape[0]}/{b.shape[1]}, the config says {rank}", file=adapter_dir)
        tensors += [(f"{gguf_name}.lora_a", a), (f"{gguf_name}.lora_b", family.transform(gguf_name, b))]
    with atomic_path(Path(out_path)) as tmp:
        writer = gguf.GGUFWriter(tmp, family.gguf_arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        if base_sha256 is not None:
            writer.add_string(BASE_SHA256_KEY, base_sha256)
        for name, array in tensors:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=ADAPTER_DTYPE))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
    return Path(out_path)
