"""GPTQ rounding in ggml's own blocks (q5_0, q5_1, q4_K): the codecs read ggml's bytes as ggml does,
uncorrelated inputs give ggml's own bytes, and correlated inputs a smaller output error than ggml's
rounding."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.backends.gguf.gptq import CODECS, gptq
from edgeft.backends.gguf.imatrix import _ggml

ROWS, N = 24, 512
TYPES = {"q5_0": 6, "q5_1": 7, "q4_k": 12}


def _ggml_bytes(w, kind, weights=None):
    codec = CODECS[kind]
    out = np.empty(w.shape[0] * w.shape[1] // codec.block * codec.nbytes, dtype=np.uint8)
    imp = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    assert _ggml()(kind, np.ascontiguousarray(w).ctypes.data, out.ctypes.data, 0, w.shape[0], w.shape[1],
                   None if imp is None else imp.ctypes.data) == out.size
    return out


def _dequantized(data, kind, rows):
    codec = CODECS[kind]
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, codec.nbytes)
    a, b = codec.grid(blocks)
    return (a * codec.codes(blocks) - b).reshape(rows, -1)


@pytest.mark.parametrize("name", TYPES)
def test_the_codecs_read_and_write_ggml_s_blocks_as_ggml_does(name):
    import gguf.quants
    from gguf.constants import GGMLQuantizationType

    kind = TYPES[name]
    w = np.random.default_rng(0).standard_normal((ROWS, N)).astype(np.float32)
    data = _ggml_bytes(w, kind, weights=np.random.default_rng(1).uniform(0.1, 2, N))
    theirs = gguf.quants.dequantize(data.reshape(ROWS, -1), GGMLQuantizationType(kind))
    assert np.allclose(_dequantized(data, kind, ROWS), theirs, rtol=1e-5, atol=1e-6)
    blocks = data.reshape(-1, CODECS[kind].nbytes).copy()
    codes = CODECS[kind].codes(blocks)
    assert codes.min() >= 0 and codes.max() <= CODECS[kind].qmax
    blocks[:, :] = blocks  # pack what was read: the same bytes
    CODECS[kind].pack(blocks, codes)
    assert blocks.tobytes() == data.tobytes()


@pytest.mark.parametrize("name", TYPES)
def test_with_uncorrelated_inputs_it_keeps_ggml_s_scales_and_rounds_each_weight_to_nearest(name):
    kind, codec = TYPES[name], CODECS[TYPES[name]]
    w = np.random.default_rng(2).standard_normal((ROWS, N)).astype(np.float32)
    w[0, :32] = 0.0  # a block of zeros
    weights = np.random.default_rng(3).uniform(0.1, 2, N)
    ours = gptq(w, np.diag(weights), kind, weights)
    # ggml on each block alone, as GPTQ asks it (q5's importance weighing then reads the block's variance, not the row's)
    alone = w.reshape(ROWS, -1, codec.block).transpose(1, 0, 2)
    blocks = np.stack([_ggml_bytes(np.ascontiguousarray(alone[i]), kind, weights[i * codec.block:(i + 1) * codec.block])
                       .reshape(ROWS, codec.nbytes) for i in range(len(alone))], axis=1).reshape(-1, codec.nbytes)
    theirs = blocks.reshape(-1)
    assert np.array_equal(ours.reshape(-1, codec.nbytes)[:, :codec.head], blocks[:, :codec.head])
    mine, ggml_s = (np.abs(w - _dequantized(d, kind, ROWS)) for d in (ours, theirs))
    assert np.all(mine <= ggml_s + 1e-6)  # nearest on ggml's grid: no weight further than ggml put it
    assert np.mean(mine < ggml_s - 1e-6) < 0.05  # and mostly ggml's own codes
    assert not _dequantized(ours, kind, ROWS)[0, :32].any()


@pytest.mark.parametrize("name", TYPES)
def test_with_correlated_inputs_its_output_error_is_smaller_than_ggml_s(name):
    kind = TYPES[name]
    rng = np.random.default_rng(4)
    w = rng.standard_normal((ROWS, N)).astype(np.float32)
    mix = np.eye(N) + 2.0 * rng.standard_normal((N, N)) / np.sqrt(N)
    x_fit, x_new = (rng.standard_normal((4096, N)) @ mix for _ in range(2))
    h = x_fit.T @ x_fit / len(x_fit)
    ours = gptq(w, h, kind, np.diag(h).copy())

    def output_error(data):
        return float(np.mean((x_new @ (w - _dequantized(data, kind, ROWS)).T) ** 2))

    mine, theirs = output_error(ours), output_error(_ggml_bytes(w, kind, np.diag(h).copy()))
    assert mine < 0.8 * theirs, (mine, theirs)  # on inputs it was not fitted to


def test_a_build_with_gptq_rounds_its_q5_tensors_under_the_measured_second_moments(tiny_llama_dir, tmp_path):
    """`[gguf] gptq = true`: the importance pass also writes the second moments, and the shipped file is
    the weighed build's, type for type and size for size, with its q5_0 tensors rounded again."""
    import json

    from click.testing import CliRunner
    from gguf import GGUFReader

    from edgeft.cli import main
    from tiny_models import tiny_profile, write_jsonl

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"input": f"Tell me about the {w} near the {v}."} for w, v in
                                                    zip("river copper violin lantern orbit meadow glacier harbor".split(),
                                                        "tunnel quartz falcon ember canyon velvet prism tundra".split())])

    def build(name: str, extra: str) -> tuple[dict, list]:
        out = tmp_path / name
        profile = tiny_profile(tmp_path, quant="q5_0", extra=extra, name=f"{name}.toml")
        r = CliRunner().invoke(main, ["build", "--no-distill", "--no-bench", "--model", str(tiny_llama_dir),
                                      "--target", str(profile), "--data", str(data), "--out", str(out)])
        assert r.exit_code == 0, r.output
        said.append(r.output)
        return json.loads((out / "manifest.json").read_text())["stages"], GGUFReader(out / "model-q5_0.gguf").tensors

    said: list[str] = []
    weighed, plain = build("weighed", "")
    stages, shipped = build("gptq", "[gguf]\ngptq = true\n")
    assert "GPTQ" not in said[0] and "q5_0 tensors rounded again by GPTQ" in said[1]
    assert stages["importance"]["second_moments"] and not weighed["importance"]["second_moments"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "gptq" / "work" / "importance" / "second_moments.safetensors"), framework="numpy") as f:
        stored, same_as = set(f.keys()), json.loads(f.metadata()["same_as"])
    assert "model.layers.0.self_attn.q_proj.weight" in stored and "model.layers.0.self_attn.v_proj.weight" not in stored
    assert same_as["model.layers.0.self_attn.v_proj.weight"] == "model.layers.0.self_attn.q_proj.weight"
    assert "q5_0 tensors rounded again by GPTQ" in stages["compile"]["importance"] and "GPTQ" not in weighed["compile"]["importance"]
    assert [(t.name, t.tensor_type, t.n_bytes) for t in shipped] == [(t.name, t.tensor_type, t.n_bytes) for t in plain]
    differ = {a.name for a, b in zip(shipped, plain) if a.data.tobytes() != b.data.tobytes()}
    q5_0 = {t.name for t in plain if t.tensor_type.name == "Q5_0"}
    assert "blk.0.attn_q.weight" in q5_0 and differ <= q5_0 and len(differ) >= len(q5_0) - 1


def test_gptq_without_the_importance_pass_is_a_profile_error(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main
    from tiny_models import tiny_profile

    profile = tiny_profile(tmp_path, quant="q5_0", extra="[gguf]\ngptq = true\nimatrix = false\n")
    r = CliRunner().invoke(main, ["targets", "validate", str(profile)])
    assert r.exit_code == 2 and "gguf.gptq: needs imatrix = true" in r.output, r.output


def test_moments_too_singular_to_invert_are_damped_more_or_refused():
    """A column no input reaches rounds to zero and carries nothing; a rank-one H is damped until it
    inverts; moments that are not finite are refused (ValueError: rewrite keeps ggml's bytes then)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((ROWS, 64)).astype(np.float32)
    x = rng.standard_normal((256, 64))
    x[:, 3] = 0.0
    h = x.T @ x / len(x)
    data = gptq(w, h, 6, np.diag(h).copy())
    assert _dequantized(data, 6, ROWS)[:, 3].tolist() == [0.0] * ROWS
    v = rng.standard_normal(64)
    assert gptq(w, np.outer(v, v), 6).shape == (ROWS, 2, 22)
    h[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        gptq(w, h, 6)
