"""Task adapters for the ONNX backend: a base graph whose LoRA weights are inputs, and one
`.onnx_adapter` file per task that ONNX Runtime (and onnxruntime-genai's Adapters API) feeds into them.

How the base graph is made: onnxruntime-genai's model builder, given a peft adapter
(`adapter_path`), writes every adapted projection as `MatMul(x, W) + MatMul(MatMul(x, A), B)` with A
and B as constants (B already times the LoRA scaling), and would quantize A and B with the rest. We
give it a template adapter over the union of the tasks' modules, keep the LoRA MatMuls out of
quantization (`nodes_to_exclude`), then turn every A and B constant into a graph input whose default
is an empty rank-0 matrix: with no adapter active the LoRA branch adds exactly zero, and an adapter of
any rank overrides the inputs by name. An `.onnx_adapter` file holds those values (A transposed, B
transposed and scaled), so one base serves every task, each adapter with its own rank.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from edgeft.errors import ArtifactError

MODEL_FILE = "model.onnx"
# The builder's names: the LoRA constants (graph inputs in our base) and the MatMul nodes using them.
INPUT = re.compile(r"^model\.layers\.(\d+)\.(attn|mlp)\.([a-z_]+)\.lora_([AB])\.MatMul\.weight$")
RANK_DIM = "lora_rank"
# peft's tensor names: base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
PEFT_KEY = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_([AB])\.weight$")
GROUPS = {"self_attn": "attn", "mlp": "mlp"}
# Projections the builder keeps separate; Phi-3's fused qkv_proj / gate_up_proj it splits per output,
# which would need the adapter's B split the same way: not written.
MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def input_name(layer: int, group: str, module: str, ab: str) -> str:
    return f"model.layers.{layer}.{group}.{module}.lora_{ab}.MatMul.weight"


def lora_nodes(n_layers: int) -> list[str]:
    """Every LoRA MatMul node the builder may write, for its `nodes_to_exclude` (names it does not
    write are ignored): A and B stay fp32 MatMuls whatever the base's level."""
    return [f"/model/layers.{layer}/{group}/{module}/lora_{ab}/MatMul"
            for layer in range(n_layers) for group, modules in (("attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                                                ("mlp", ("gate_proj", "up_proj", "down_proj")))
            for module in modules for ab in "AB"]


def _adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError("adapter_config.json is missing; not a peft LoRA adapter folder", file=adapter_dir) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"not valid JSON ({exc})", file=path) from None
    if config.get("peft_type") != "LORA":
        raise ArtifactError(f"peft_type {config.get('peft_type')!r}: only LoRA adapters have an ONNX adapter format",
                            file=path, place="peft_type")
    for key in ("use_dora", "alpha_pattern", "rank_pattern"):
        if config.get(key):
            raise ArtifactError(f"{key} is set: the ONNX adapter export handles plain LoRA with one alpha", file=path,
                                place=key)
    return config


def peft_tensors(adapter_dir: Path) -> dict[str, "object"]:
    """Our input name -> the adapter's value for it (numpy fp32: A^T, and B^T times the LoRA scaling)."""
    import numpy as np
    from safetensors.numpy import load_file

    config = _adapter_config(adapter_dir)
    weights_path = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise ArtifactError("adapter_model.safetensors is missing", file=adapter_dir)
    weights = load_file(str(weights_path))
    out = {}
    for key, value in weights.items():
        match = PEFT_KEY.search(key)
        if match is None:
            raise ArtifactError(f"tensor {key} is not a LoRA A/B of a decoder layer's projection", file=weights_path)
        layer, group, module, ab = int(match[1]), GROUPS[match[2]], match[3], match[4]
        if module not in MODULES:
            raise ArtifactError(f"tensor {key}: module {module} is fused in the ONNX graph; adapters on it are not "
                                f"exported (adapt {', '.join(sorted(MODULES))})", file=weights_path)
        value = value.astype(np.float32).T
        if ab == "B":
            rank = value.shape[0]
            alpha = float(config.get("lora_alpha", rank))
            value = value * (alpha / (rank ** 0.5 if config.get("use_rslora") else rank))
        out[input_name(layer, group, module, ab)] = np.ascontiguousarray(value)
    if not out:
        raise ArtifactError("the adapter holds no LoRA tensors", file=weights_path)
    return out


def target_modules(adapter_dirs: Iterable[Path]) -> list[str]:
    """The union of the projections the adapters train, for the template adapter."""
    names: set[str] = set()
    for folder in adapter_dirs:
        names.update(PEFT_KEY.search(k)[3] for k in tensor_names(folder) if PEFT_KEY.search(k))
    return sorted(names)


def tensor_names(adapter_dir: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), framework="numpy") as f:
        return list(f.keys())


def write_template(model_dir: Path, modules: list[str], out: Path) -> Path:
    """A rank-1 peft adapter over `modules` of `model_dir`: what the builder is given so that it writes
    the LoRA branch of every projection some task adapts. Its values are discarded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    bad = sorted(set(modules) - MODULES)
    if bad:
        raise ArtifactError(f"adapters on {', '.join(bad)} (fused in the ONNX graph) are not exported", file=model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=modules))
    peft_model.save_pretrained(str(out))
    return out


def lora_inputs(model_path: Path) -> dict[str, list]:
    """The base graph's LoRA inputs: name -> shape (a str for the symbolic rank)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    out = {}
    for value in model.graph.input:
        if INPUT.match(value.name):
            dims = value.type.tensor_type.shape.dim
            out[value.name] = [d.dim_param if d.dim_param else d.dim_value for d in dims]
    return out


def open_lora_inputs(folder: Path, expected: int) -> int:
    """Rewrite `folder`'s model.onnx (the builder's, with constant LoRA weights) so that every A and B
    is a graph input with an empty default; returns how many. `expected` (2 per adapted projection) is
    checked: a builder that wrote fewer LoRA branches would leave some projection unadaptable."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model_path = folder / MODEL_FILE
    model = onnx.load(str(model_path), load_external_data=True)
    kept, lora = [], []
    for tensor in model.graph.initializer:
        (lora if INPUT.match(tensor.name) else kept).append(tensor)
    if len(lora) != expected:
        raise ArtifactError(f"the model builder wrote {len(lora)} LoRA weights, {expected} expected", file=model_path)
    for tensor in lora:
        if tensor.data_type != TensorProto.FLOAT:
            raise ArtifactError(f"LoRA weight {tensor.name} is not fp32 (quantized by the builder?)", file=model_path)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for tensor in lora:
        rows, cols = tensor.dims
        a = INPUT.match(tensor.name)[4] == "A"
        shape, empty = ([rows, RANK_DIM], (rows, 0)) if a else ([RANK_DIM, cols], (0, cols))
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, TensorProto.FLOAT, shape))
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(empty, np.float32), tensor.name))
    data_files = {p.name for p in folder.glob("*.data")}
    for name in data_files:
        (folder / name).unlink()
    onnx.save(model, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{MODEL_FILE}.data", size_threshold=1024)
    return len(lora)


def fingerprint(folder: Path) -> int:
    """28 bits of the base graph's sha256 (model.onnx and its external data): what an `.onnx_adapter`
    records as its model version, the one integer its format has for the model it belongs to. Another
    base is told apart with probability 1 - 2^-28."""
    import hashlib

    digest = hashlib.sha256()
    for path in [folder / MODEL_FILE, *sorted(folder.glob("*.data"))]:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return int(digest.hexdigest()[:7], 16)


def export(adapter_dir: Path, base_folder: Path, out_path: Path) -> Path:
    """`adapter_dir` (peft) as an `.onnx_adapter` for the base graph in `base_folder`, atomically."""
    import onnxruntime as ort

    from edgeft.atomic_io import atomic_path

    values = peft_tensors(adapter_dir)
    inputs = lora_inputs(base_folder / MODEL_FILE)
    for name, value in values.items():
        check_shape(name, value.shape, inputs, file=adapter_dir)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(fingerprint(base_folder))
    fmt.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in values.items()})
    with atomic_path(out_path) as tmp:
        fmt.export_adapter(str(tmp))
    return out_path


def check_shape(name: str, shape: tuple, inputs: dict[str, list], *, file: Path) -> None:
    if name not in inputs:
        raise ArtifactError(f"sets {name}, which the base graph has no input for (an adapter on other modules or "
                            "another model)", file=file)
    want = inputs[name]
    if len(shape) != 2 or any(isinstance(w, int) and w != s for w, s in zip(want, shape)):
        raise ArtifactError(f"{name} has shape {list(shape)}; the base graph takes {want}", file=file)


def read(path: Path) -> "object":
    """The adapter file as ONNX Runtime reads it, or one line on why it cannot."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ArtifactError("no such adapter file", file=path)
    try:
        return ort.AdapterFormat.read_adapter(str(path))
    except Exception as exc:  # ORT raises its own types
        raise ArtifactError(f"not an ONNX Runtime adapter file ({' '.join(str(exc).split())[:200]})", file=path) from None


def check_base(adapter: Path, base_folder: Path) -> None:
    """Refuse an adapter exported for another base graph (its recorded fingerprint differs)."""
    recorded = read(adapter).get_model_version()
    actual = fingerprint(base_folder)
    if recorded != actual:
        raise ArtifactError(f"this adapter was exported for another base (model version {recorded:#x}; "
                            f"{base_folder.name} is {actual:#x}): export it again against this base", file=adapter)


# -- prefix tuning: the learned prefix as the initial KV cache ------------------------------------
PREFIX_SUFFIX = ".prefix.safetensors"
PREFIX_FORMAT = "edgeft-prefix-kv"


def peft_type(adapter_dir: Path) -> str | None:
    try:
        return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    except (OSError, ValueError):
        return None


def is_prefix_file(path: Path) -> bool:
    return str(path).endswith(PREFIX_SUFFIX)


def export_prefix(adapter_dir: Path, model_dir: Path, base_folder: Path, out_path: Path) -> Path:
    """A peft prefix-tuning adapter as the keys and values it puts before every sequence, under the base
    graph's `past_key_values` input names, with the base's fingerprint; written atomically.

    Why this is the same model: peft's prefix enters each layer's attention as cached keys and values
    (post-rotary, as a cache holds them), and the prompt's positions start after it. The ONNX graph's
    past inputs hold the same (its attention applies rotary to new keys only, at positions counted
    from the past length), so a runner that starts from these instead of an empty cache computes what
    the peft model does."""
    import torch
    from peft import PeftModel
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM

    from edgeft.atomic_io import atomic_path
    from edgeft.backends.onnx.runner import read_genai_config

    if peft_type(adapter_dir) != "PREFIX_TUNING":
        raise ArtifactError("not a peft prefix-tuning adapter", file=adapter_dir)
    decoder = read_genai_config(base_folder)["model"]["decoder"]
    names = decoder.get("inputs", {})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    with torch.no_grad():
        cache = peft_model.get_prompt(batch_size=1)
    tensors = {}
    for i, layer in enumerate(cache.layers):
        tensors[names.get("past_key_names", "past_key_values.%d.key") % i] = layer.keys.float().numpy().copy()
        tensors[names.get("past_value_names", "past_key_values.%d.value") % i] = layer.values.float().numpy().copy()
    want = [1, int(decoder["num_key_value_heads"]), None, int(decoder["head_size"])]
    if len(cache.layers) != int(decoder["num_hidden_layers"]):
        raise ArtifactError(f"the prefix has {len(cache.layers)} layers, the base graph {decoder['num_hidden_layers']}",
                            file=adapter_dir)
    _check_prefix(tensors, {name: want for name in tensors}, file=adapter_dir)
    meta = {"format": PREFIX_FORMAT, "base_fingerprint": str(fingerprint(base_folder)),
            "num_virtual_tokens": str(next(iter(tensors.values())).shape[2])}
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out_path


def _check_prefix(tensors: dict, shapes: dict[str, list], *, file: Path) -> None:
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise ArtifactError(f"the prefix has no {missing[0]}", file=file)
    lengths = set()
    for name, want in shapes.items():
        got = list(tensors[name].shape)
        if len(got) != 4 or any(w is not None and w != g for w, g in zip(want, got)):
            raise ArtifactError(f"{name} has shape {got}; the base graph's cache is {['P' if w is None else w for w in want]}",
                                file=file)
        lengths.add(got[2])
    if len(lengths) != 1 or 0 in lengths:
        raise ArtifactError(f"the prefix's layers differ in length or are empty ({sorted(lengths)})", file=file)


def _prefix_meta(path: Path) -> dict:
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ArtifactError("no such adapter file", file=path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own types
        raise ArtifactError(f"not a safetensors file ({' '.join(str(exc).split())[:200]})", file=path) from None
    if meta.get("format") != PREFIX_FORMAT:
        raise ArtifactError("not a prefix written by edgeft (no edgeft-prefix-kv metadata)", file=path)
    return meta


def prefix_positions(path: Path) -> int:
    """The cache positions a prefix file puts before every sequence (0 for any other adapter file)."""
    if not is_prefix_file(path):
        return 0
    try:
        return int(_prefix_meta(path).get("num_virtual_tokens", "0"))
    except ValueError:
        raise ArtifactError("num_virtual_tokens in its metadata is not a number", file=path) from None


def read_prefix(path: Path, shapes: dict[str, list], dtype) -> dict:
    """The prefix's keys and values, checked against the runner's cache inputs, in its dtype."""
    from safetensors.numpy import load_file

    _prefix_meta(path)
    tensors = load_file(str(path))
    _check_prefix(tensors, shapes, file=path)
    return {name: tensors[name].astype(dtype) for name in shapes}


def check_prefix_base(path: Path, base_folder: Path) -> None:
    recorded = int(_prefix_meta(path).get("base_fingerprint", "-1"))
    actual = fingerprint(base_folder)
    if recorded != actual:
        raise ArtifactError(f"this prefix was exported for another base (fingerprint {recorded:#x}; "
                            f"{base_folder.name} is {actual:#x}): export it again against this base", file=path)
