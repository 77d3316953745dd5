"""The ONNX builder's int4 weights rounded again, weighed by the importance file (`weighted_int4.py`):
never worse than the builder's rounding block by block, the layout ONNX Runtime reads, every
family's tensors found, and nothing rewritten from weights that are not the ones exported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeft import importance
from edgeft.backends.onnx import OnnxOptions, uses_importance
from edgeft.backends.onnx.export import ARCHITECTURES
from edgeft.backends.onnx.weighted_int4 import hf_weights, pack, quantize, requantize, round_blocks, unpack
from edgeft.config import load_target
from edgeft.sweep import compile_level
from tiny_models import tiny_llama, tiny_profile, write_jsonl

pytest.importorskip("onnxruntime")


def _builder_rounding(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The builder's symmetric round-to-nearest, as its files decode: scale = largest magnitude / 8."""
    scale = np.abs(x).max(1) / 8
    q = np.clip(np.rint(x / np.where(scale == 0, 1, scale)[:, None]), -8, 7)
    return q, scale


def _weighted_error(x, w, q, s):
    return (w * (x - s[:, None] * q) ** 2).sum(1)


def test_each_block_ends_no_worse_than_round_to_nearest_and_the_weighed_columns_gain():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4000, 32)) * rng.lognormal(0, 0.5, (4000, 1))).astype(np.float32)
    x[:5] = 0  # all-zero blocks stay zero
    w = np.broadcast_to(rng.lognormal(0, 1.5, 32).astype(np.float32), x.shape)
    q, s = round_blocks(x, w)
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7
    ours = _weighted_error(x, w, q.astype(np.float32), s)
    rtn = _weighted_error(x, w, *_builder_rounding(x))
    assert np.all(ours <= rtn * (1 + 1e-5) + 1e-12)
    assert ours.sum() < 0.8 * rtn.sum()  # measured 0.6x on this draw
    assert np.all(s[:5] * q[:5].max(1) == 0)
    # the heavy columns carry the gain: their share of the error falls
    heavy = w[0] > np.median(w[0])
    err = (x - s[:, None] * q) ** 2
    rtn_q, rtn_s = _builder_rounding(x)
    assert err[:, heavy].mean() < ((x - rtn_s[:, None] * rtn_q) ** 2)[:, heavy].mean()


def test_pack_is_two_weights_a_byte_low_nibble_first_and_unpack_reads_it_back():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 70)).astype(np.float32)  # 70: the last block padded, as the builder pads it
    packed, scales = quantize(w, np.ones(70, np.float32), 32)
    assert packed.shape == (6, 3, 16) and packed.dtype == np.uint8 and scales.shape == (6, 3)
    back = unpack(packed, scales, 70)
    assert back.shape == w.shape and np.abs(back - w).max() <= np.abs(scales).max()
    q = np.array([[-8, 7] + [0] * 30], np.int8)
    assert pack(q, 1, 1, 32)[0, 0, 0] == (0 | 15 << 4)


def test_options_that_weigh_and_options_that_do_not():
    on = OnnxOptions()
    assert uses_importance(on, "int4")
    assert not uses_importance(on, "int8") and not uses_importance(on, "fp32")
    for off in (OnnxOptions(importance=False), OnnxOptions(symmetric=False), OnnxOptions(algorithm="k_quant")):
        assert not uses_importance(off, "int4")


def _importance_file(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.integers(3, 200, size=n).tolist() for n in (12, 20, 16)]
    records = write_jsonl(tmp_path / "train.jsonl", [{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows])
    importance.collect(model_dir, records, tmp_path / importance.FILE)
    return tmp_path / importance.FILE


def _int4_tensors(folder):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits" and attrs["bits"] == 4:
            packed = numpy_helper.to_array(inits[node.input[1]])
            scales = numpy_helper.to_array(inits[node.input[2]]).reshape(packed.shape[:2]).astype(np.float32)
            out[node.input[1]] = unpack(packed, scales, attrs["K"])
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_int4_weight_of_every_family_is_rounded_again_and_the_folder_runs(arch, tiny_model_dirs, tmp_path):
    """Through the backend's compile, as a build calls it: every MatMulNBits weight found and rewritten,
    each one's importance-weighted error no larger than the builder's, the marker says so, and the
    folder still loads and answers."""
    from safetensors import safe_open

    from edgeft.backends.onnx.backend import OnnxBackend
    from edgeft.backends.onnx.runner import OnnxRunner
    from edgeft.stages import key as stage_key

    model_dir = tiny_model_dirs[arch]
    target = load_target(tiny_profile(tmp_path, backend="onnx", quant="int4", name="t.toml"))
    weights = _importance_file(model_dir, tmp_path)
    backend = OnnxBackend()
    plain = compile_level(backend, model_dir, target, tmp_path / "plain", tmp_path / "work", stage_key("p"), "m").artifact
    weighed = compile_level(backend, model_dir, target, tmp_path / "weighed", tmp_path / "work", stage_key("p"), "m",
                            importance=weights).artifact

    marker = json.loads((weighed.path / "edgeft_export.json").read_text())
    before, after = _int4_tensors(plain.path), _int4_tensors(weighed.path)
    assert marker["importance"]["rewritten"] == len(after) > 0 and marker["importance"]["left"] == 0
    assert "importance" not in json.loads((plain.path / "edgeft_export.json").read_text())

    handles = [safe_open(str(p), framework="pt") for p in model_dir.glob("*.safetensors")]

    def read(name):
        return next((h.get_tensor(name).float().numpy() for h in handles if name in h.keys()), None)

    means = importance.load(weights)
    tied = json.loads((model_dir / "config.json").read_text()).get("tie_word_embeddings", False)
    gained = 0.0
    for name, new in after.items():
        w, key = hf_weights(name, read, tied)
        col = means[key]
        err_new, err_old = ((new - w) ** 2 * col).sum(), ((before[name] - w) ** 2 * col).sum()
        assert err_new <= err_old * (1 + 1e-4), name
        gained += err_old - err_new
    assert gained > 0

    runner = OnnxRunner(weighed.path, threads=1, context=64)
    try:
        logits = runner.logits([5, 17, 42, 9])
        assert np.isfinite(logits).all() and logits.shape[0] == 4
    finally:
        runner.close()


def test_weights_that_are_not_the_exported_ones_are_never_written(tiny_model_dirs, tmp_path):
    """The safety check: the builder's decoding is compared with the HF weights before anything is
    replaced, so a folder paired with the wrong model is left byte for byte as the builder wrote it."""
    from edgeft.backends.onnx.backend import OnnxBackend
    from edgeft.stages import key as stage_key

    model_dir = tiny_model_dirs["LlamaForCausalLM"]
    target = load_target(tiny_profile(tmp_path, backend="onnx", quant="int4", name="t.toml"))
    artifact = compile_level(OnnxBackend(), model_dir, target, tmp_path / "out", tmp_path / "work", stage_key("w"), "m").artifact
    other = tiny_llama(tmp_path / "other", seed=1)
    folder = tmp_path / "copy"
    shutil.copytree(artifact.path, folder)
    data = (folder / "model.onnx.data").read_bytes()
    counts = requantize(folder / "model.onnx", other, _importance_file(other, tmp_path))
    assert counts["rewritten"] == 0 and counts["left"] == len(_int4_tensors(artifact.path))
    assert (folder / "model.onnx.data").read_bytes() == data
