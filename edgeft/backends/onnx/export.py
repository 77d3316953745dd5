"""HF folder -> ONNX folder with a KV cache, through onnxruntime-genai's model builder.

Why the builder (measured; see benchmarks/onnx_vs_gguf.py and the README): it works with
transformers 5 (optimum's exporter pins transformers < 4.58), writes the fused CPU graph
(GroupQueryAttention with the KV cache, SkipSimplifiedLayerNormalization, MatMulNBits) that
ONNX Runtime GenAI and its mobile SDKs run, and its fp32 graph matches transformers to about
1e-6 relative on our tiny models. `torch.onnx.export` gives no KV-cache graph for these models.

The builder runs in a child process: it prints freely, imports torch, and a failure in it
becomes one line naming the model folder instead of a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.atomic_io import atomic_dir
from edgeft.errors import ArtifactError, ModelSourceError, UnsupportedArchitecture
from edgeft.manifest import sha256
from edgeft.progress import progress

if TYPE_CHECKING:
    from edgeft.backends.onnx.options import OnnxOptions

from edgeft.backends.marker import MARKER  # noqa: E402
from edgeft.backends.onnx import ARCHITECTURES  # noqa: E402 - the registered list, checked again here
from edgeft.backends.onnx.adapters import lora_nodes, open_lora_inputs, tensor_names  # noqa: E402
# Our level -> the builder's `--precision`.
PRECISIONS = {"fp32": "fp32", "int8": "int8", "int4": "int4"}
MODEL_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"


def check_architecture(model_dir: Path) -> str:
    """Refuse a folder the exporter does not handle, before any heavy work starts."""
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError("config.json is missing", file=model_dir) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"not valid JSON ({exc})", file=config_path) from None
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"architecture {arch!r} is not supported by the onnx backend (supported: {', '.join(ARCHITECTURES)})",
            file=config_path,
            place="architectures",
        )
    return arch


def builder_command(model_dir: Path, out_dir: Path, cache_dir: Path, quant: str, options: "OnnxOptions",
                    adapter_template: Path | None = None, layers: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "edgeft.backends.onnx.builder_child", "-i", str(model_dir), "-o", str(out_dir),
           "-p", PRECISIONS[quant], "-e", "cpu", "-c", str(cache_dir), "--extra_options", "hf_token=false",
           # sliding-window layers (Gemma 3) keep a full-length KV cache like the others: the bounded
           # one needs a runner that preallocates it per layer, which ours and the tests' do not
           "windowed_kv_cache=false"]
    if quant != "fp32":  # the quantization options are meaningless (and logged as such) at fp32
        cmd += options.builder_options()
    if adapter_template is not None:  # the LoRA branches, kept fp32 (adapters.py)
        cmd += [f"adapter_path={adapter_template}"]
        if quant != "fp32":
            cmd += [f"nodes_to_exclude={','.join(lora_nodes(layers or 0))}"]
    return cmd


def _failure_line(output: list[str]) -> str:
    """The builder's own reason: the last exception line of its output."""
    for line in reversed(output):
        text = line.strip()
        head = text.split(":", 1)[0]
        if text and head.endswith(("Error", "Exception")):
            return text
    tail = [line.strip() for line in output if line.strip()]
    return tail[-1] if tail else "no output"


def _num_layers(model_dir: Path) -> int | None:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export(model_dir: Path, out_dir: Path, quant: str, options: "OnnxOptions", *, marker: dict | None = None,
           adapter_template: Path | None = None, importance: Path | None = None) -> Path:
    """Write the ONNX folder for `quant` to `out_dir` atomically; return `out_dir`. `marker` is
    written into it as edgeft_export.json (what the backend reads back to know the level).

    With `adapter_template` (a peft LoRA folder), the graph takes LoRA weights as inputs for every
    projection the template adapts, and computes the plain model while none are fed (adapters.py).
    With `importance` (`edgeft.importance`'s file for `model_dir`), the builder's int4 weights are
    rounded again weighing it (weighted_int4.py); the marker records the file's digest and what was rewritten."""
    check_architecture(model_dir)
    if quant not in PRECISIONS:
        raise ArtifactError(f"unknown onnx level {quant!r} (known: {', '.join(PRECISIONS)})", file=model_dir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    layers = _num_layers(model_dir)
    with tempfile.TemporaryDirectory(prefix="edgeft-onnx-cache-") as cache, atomic_dir(out_dir) as tmp:
        cmd = builder_command(model_dir.resolve(), tmp, Path(cache), quant, options,
                              adapter_template.resolve() if adapter_template else None, layers)
        output: list[str] = []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        # The builder prints one "Reading ..." line per layer (plus embedding, final norm, LM head).
        reading = (line for line in _collect(proc.stdout, output) if line.startswith("Reading "))
        for _ in progress(reading, desc=f"exporting ONNX {quant}", total=(layers + 3) if layers else None):
            pass
        if proc.wait() != 0:
            raise ArtifactError(f"onnxruntime-genai's model builder failed: {_failure_line(output)}", file=model_dir)
        if not (tmp / MODEL_FILE).is_file() or not (tmp / GENAI_CONFIG).is_file():
            raise ArtifactError(f"the model builder wrote no {MODEL_FILE} and {GENAI_CONFIG}: {_failure_line(output)}",
                                file=model_dir)
        if adapter_template is not None:
            open_lora_inputs(tmp, len(tensor_names(adapter_template)))  # one A and one B per adapted projection
        if importance is not None:
            from edgeft.backends.onnx.weighted_int4 import requantize
            from edgeft.progress import status

            status(f"rounding the {quant} weights again, weighed by {importance.parent.name}/{importance.name} ...")
            counts = requantize(tmp / MODEL_FILE, model_dir, importance)
            # the file's name and digest, not its path: the folder ships, and the build machine's paths stay behind
            marker = {**(marker or {}), "importance": {"name": importance.name, "sha256": sha256(importance), **counts}}
        check_loadable(tmp / MODEL_FILE, model_dir)
        if marker is not None:
            (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return out_dir


def check_loadable(model_path: Path, model_dir: Path) -> None:
    """The builder can write graphs ONNX Runtime refuses (e.g. asymmetric int4 with tied embeddings
    in onnxruntime-genai 0.18); refuse them here, before the folder gets its final name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a load check, not a run
    try:
        ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        reason = " ".join(str(exc).split())[:300]
        raise ArtifactError(f"the model builder wrote a graph onnxruntime cannot load ({reason})", file=model_dir) from None


def _collect(stream, sink: list[str]):
    for line in stream:
        sink.append(line)
        yield line
