"""The TensorRT backend's host half, for real on the CPU: the TensorRT-ready export checked in
onnxruntime against transformers, ModelOpt's weight-only int8/int4 against the fp32 graph, and the
one-line refusal where no GPU or TensorRT is present. The engine half needs an NVIDIA GPU with
TensorRT and runs in benchmarks/tensorrt_device.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeft.backends.registry import get_backend
from edgeft.backends.tensorrt import ARCHITECTURES
from edgeft.backends.tensorrt.export import kv_names
from edgeft.backends.tensorrt.runner import OrtRunner
from edgeft.config import load_target
from edgeft.sweep import compile_level
from tiny_models import tiny_profile

TEXT = "The quick brown fox jumps over the lazy dog. Edge devices run small language models with quantized weights. " * 3
TESTED = [a for a in ARCHITECTURES if a != "MistralForCausalLM"]  # Mistral has the Llama layout; no tiny builder


def _target(tmp_path, quant: str, extra: str = ""):
    return load_target(tiny_profile(tmp_path, backend="tensorrt", quant=quant, extra=extra, name=f"trt-{quant}.toml"))


@pytest.fixture(scope="module")
def trt_builds(tiny_model_dirs, tmp_path_factory):
    """fp32 (the reference), fp16, int8 and int4 of each tested family, through the sweep's compile."""
    backend = get_backend("tensorrt")
    out = {}
    for arch in TESTED:
        root = tmp_path_factory.mktemp(f"trt-{arch}")
        for quant in ("fp32", "fp16", "int8", "int4"):
            target = _target(root, quant, extra="[tensorrt]\nblock_size = 32\n")
            level = compile_level(backend, tiny_model_dirs[arch], target, root / quant, root / "work", f"key-{arch}", arch)
            out[arch, quant] = level
    return out


def _hf_logits(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy(), model


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(p_logits, q_logits) -> float:
    p, q = _log_softmax(p_logits), _log_softmax(q_logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("arch", TESTED)
def test_fp32_export_matches_transformers_in_onnxruntime(arch, trt_builds, tiny_model_dirs):
    """Relative max-abs logit error within 1e-4: the graph is transformers' own modules re-traced, so
    only float reassociation separates them (measured about 6e-7); a wrong rotary layout, mask or
    GQA expansion gives errors of order 1."""
    runner = OrtRunner(trt_builds[arch, "fp32"].artifact.path, threads=1, context=256)
    ids = runner.tokenize(TEXT)
    want, model = _hf_logits(tiny_model_dirs[arch], ids)
    got = runner.logits(ids)
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-4


@pytest.mark.parametrize("arch", TESTED)
def test_explicit_kv_cache_greedy_equals_transformers_greedy(arch, trt_builds, tiny_model_dirs):
    import torch

    runner = OrtRunner(trt_builds[arch, "fp32"].artifact.path, threads=1, context=256)
    ids = runner.tokenize(TEXT)[:12]
    _, model = _hf_logits(tiny_model_dirs[arch], ids)
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
    assert runner.generate(ids, 10).tokens == want


def test_graph_is_standard_ops_with_the_cache_as_inputs_and_outputs(trt_builds, tiny_model_dirs):
    import onnx

    folder = trt_builds["LlamaForCausalLM", "fp16"].artifact.path
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}, "contrib ops TensorRT's parser does not take"
    layers = json.loads((tiny_model_dirs["LlamaForCausalLM"] / "config.json").read_text())["num_hidden_layers"]
    past, present = kv_names(layers)
    assert [i.name for i in graph.input] == ["input_ids", "position_ids", *past]
    assert [o.name for o in graph.output] == ["logits", *present]
    weights = [i for i in graph.initializer if len(i.dims) == 2]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    # a tied head is stored once: the Gather table feeds the head's Gemm
    gemm = [n for n in graph.node if n.op_type == "Gemm"]
    gather = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in {i.name for i in graph.initializer}]
    assert gemm and gather and gemm[0].input[1] == gather[0].input[0]


@pytest.mark.parametrize("arch", TESTED)
@pytest.mark.parametrize("quant,kl_bound", [("int8", 2e-3), ("int4", 0.08), ("fp16", 1e-3)])
def test_levels_stay_close_to_the_fp32_reference(arch, quant, kl_bound, trt_builds):
    """Each level's KL from the fp32 graph, in onnxruntime on the same tokens. Bounds sit well above
    what the tiny random models measure (int8 ~1e-4, int4 ~1e-2, fp16 ~1e-6) and well below a
    broken graph (KL of order 1)."""
    level = trt_builds[arch, quant]
    assert level.reference.quant == ("fp16" if quant == "fp16" else "fp32")
    ref = OrtRunner(trt_builds[arch, "fp32"].artifact.path, threads=1, context=256)
    runner = OrtRunner(level.artifact.path, threads=1, context=256)
    ids = ref.tokenize(TEXT)
    kl = _kl(ref.logits(ids), runner.logits(ids))
    assert 0 <= kl < kl_bound, kl


def test_quantized_graphs_are_weight_only_dequantize_nodes(trt_builds):
    import onnx

    for quant in ("int8", "int4"):
        graph = onnx.load(str(trt_builds["LlamaForCausalLM", quant].artifact.path / "model.onnx"), load_external_data=False).graph
        ops = [n.op_type for n in graph.node]
        assert ops.count("DequantizeLinear") == 14 and "QuantizeLinear" not in ops  # 7 GEMMs x 2 layers, head kept
        marker = json.loads((trt_builds["LlamaForCausalLM", quant].artifact.path / "edgeft_export.json").read_text())
        assert marker == {"backend": "tensorrt", "quant": quant}


def test_export_check_passes_on_the_host_runner(trt_builds, tiny_model_dirs):
    """The build's export check (tokenizer, template, EOS, vocabulary, logits) holds for the graph."""
    from edgeft.export_check import check_outputs, check_tokenizer_parity

    runner = OrtRunner(trt_builds["LlamaForCausalLM", "fp32"].artifact.path, threads=1, context=256)
    report = check_tokenizer_parity(tiny_model_dirs["LlamaForCausalLM"], runner)
    assert report["token_mismatches"] == 0 and report["eos_matches"] and report["chat_template_matches"] and report["vocab_matches"]
    assert check_outputs(tiny_model_dirs["LlamaForCausalLM"], runner, "fp32", 1e-3)["max_rel_logit_error"] < 1e-4


def test_build_says_in_one_line_why_it_cannot_run(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edgeft.cli", "build", "--no-distill", "--model", str(tiny_llama_dir),
                           "--target", "tensorrt", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "TensorRT engines need an NVIDIA GPU and TensorRT" in lines[0]
    assert "no NVIDIA GPU is visible" in lines[0] and "tensorrt module is not installed" in lines[0]


def test_doctor_lists_tensorrt_as_unavailable_with_the_reason():
    from click.testing import CliRunner

    from edgeft.backends.tensorrt.backend import missing
    from edgeft.cli import main

    result = CliRunner().invoke(main, ["doctor", "--json"])
    report = {r["backend"]: r for r in json.loads(result.output[result.output.index("["):])}
    assert report["tensorrt"]["available"] is False
    assert all(reason in report["tensorrt"]["reason"] for reason in missing())
