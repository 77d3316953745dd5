"""The importance matrix: measured on training text (`edgeft.importance`), then weighed into
llama.cpp's rounding by ggml's own quantizer (`backends/gguf/imatrix.py`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeft import importance
from edgeft.backends.gguf import GGUFOptions, uses_importance
from edgeft.backends.gguf.backend import LlamaCppRunner, quantize
from edgeft.backends.gguf.convert import convert
from edgeft.backends.gguf.imatrix import gguf_importance, requantize
from tiny_models import tiny_llama, tiny_qwen2, write_jsonl


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """256 wide, so that q4_k_m writes real K-quant blocks (and q6_k ones) for it."""
    return tiny_llama(tmp_path_factory.mktemp("wide-llama"), hidden=256, layers=2)


def _records(path, rows, width=24):
    """Rows of token ids, right-padded with attention masks, as the data stage writes them."""
    return write_jsonl(path, [{"input_ids": r + [0] * (width - len(r)), "labels": r + [-100] * (width - len(r)),
                               "attention_mask": [1] * len(r) + [0] * (width - len(r))} for r in rows])


def test_collect_is_the_mean_square_input_of_every_linear_weight(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    rng = np.random.default_rng(0)
    rows = [rng.integers(3, 300, size=n).tolist() for n in (5, 17, 9, 24, 11)]
    info = importance.collect(tiny_llama_dir, _records(tmp_path / "train.jsonl", rows), tmp_path / importance.FILE, batch=2)
    got = importance.load(tmp_path / importance.FILE)
    assert info["tokens"] == sum(map(len, rows)) and info["records"] == len(rows)

    # The same means, by hand: each record alone (no padding at all), every linear layer's input kept.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(got) == set(linears)  # lm_head included: the tied head still multiplies the final states
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen[name].append(args[0][0]))
             for name, m in linears.items()]
    with torch.no_grad():
        for r in rows:
            model(torch.tensor([r]))
    for h in hooks:
        h.remove()
    for name, xs in seen.items():
        want = (torch.cat(xs).double() ** 2).mean(0).float().numpy()
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-7, err_msg=name)


def test_collect_stops_at_max_tokens_and_refuses_empty_text(tiny_llama_dir, tmp_path):
    rows = [list(range(3, 23))] * 4
    info = importance.collect(tiny_llama_dir, _records(tmp_path / "t.jsonl", rows), tmp_path / "a.safetensors",
                              max_tokens=30)
    assert info["tokens"] == 30 and info["records"] == 2
    from edgeft.errors import EdgeftError

    with pytest.raises(EdgeftError, match="no tokens"):
        importance.collect(tiny_llama_dir, _records(tmp_path / "e.jsonl", []), tmp_path / "b.safetensors")


def test_hf_names_map_to_the_tensors_our_converter_writes(tiny_llama_dir, tmp_path):
    from gguf import GGUFReader

    values = {"model.layers.0.self_attn.q_proj.weight": np.ones(64, np.float32), importance.HEAD: np.ones(64, np.float32)}
    tied = gguf_importance(tiny_llama_dir, values)
    assert set(tied) == {"blk.0.attn_q.weight", "token_embd.weight"}  # the tied head is the token table
    untied_dir = tiny_qwen2(tmp_path / "qwen2")
    assert "output.weight" in gguf_importance(untied_dir, values)
    names = {t.name for t in GGUFReader(convert(untied_dir, tmp_path / "q.gguf", "f16")).tensors}
    assert set(gguf_importance(untied_dir, values)) <= names


def _quantized(wide_llama, tmp_path):
    f16 = convert(wide_llama, tmp_path / "f16.gguf", "f16")
    q = quantize(f16, tmp_path / "q.gguf", "q4_k_m", threads=1, embedding_type="q4_0")
    return f16, q


def test_without_importance_the_requantizer_writes_llama_cpps_bytes(wide_llama, tmp_path):
    """Pins what the in-place rewrite relies on: the same tensors, types, offsets and rounding as llama.cpp."""
    from gguf import GGUFReader

    f16, q = _quantized(wide_llama, tmp_path)
    copy = shutil.copyfile(q, tmp_path / "copy.gguf")
    names = {t.name for t in GGUFReader(q).tensors}
    done = requantize(copy, f16, {n: None for n in names}, threads=2)
    types = {t.name: t.tensor_type.name for t in GGUFReader(q).tensors}
    assert {types[n] for n in done} >= {"Q4_K", "Q6_K", "Q4_0"}  # the mix's K types and the table
    assert copy.read_bytes() == q.read_bytes()


def test_importance_lowers_the_weighted_rounding_error(wide_llama, tmp_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    f16, q = _quantized(wide_llama, tmp_path)
    weighed = shutil.copyfile(q, tmp_path / "weighed.gguf")
    rng = np.random.default_rng(1)
    plain = {t.name: t for t in GGUFReader(q).tensors}
    weights = {n: np.exp(rng.normal(0, 2, t.shape[0])).astype(np.float32)  # a few columns matter most, as in real models
               for n, t in plain.items() if t.tensor_type.name not in ("F32", "F16", "Q8_0")}
    assert sorted(requantize(weighed, f16, weights, threads=2)) == sorted(weights)
    source = {t.name: np.asarray(t.data, dtype=np.float32) for t in GGUFReader(f16).tensors}
    new = {t.name: t for t in GGUFReader(weighed).tensors}
    better = 0
    for name, w in weights.items():
        x = source[name].reshape(-1, w.size)

        def err(t):
            return float((w * (x - dequantize(t.data, t.tensor_type).reshape(x.shape)) ** 2).sum())

        assert new[name].tensor_type == plain[name].tensor_type  # same type, same bytes count: written in place
        better += err(new[name]) < err(plain[name])
    assert better == len(weights)
    runner = LlamaCppRunner(weighed, threads=1, context=64)  # still a file llama.cpp loads and runs
    try:
        assert len(runner.generate([1, 5, 9, 14], 8).tokens) == 8
    finally:
        runner.close()


def test_requantize_refuses_an_importance_of_the_wrong_width(wide_llama, tmp_path):
    from edgeft.errors import ArtifactError

    f16, q = _quantized(wide_llama, tmp_path)
    with pytest.raises(ArtifactError, match="columns"):
        requantize(q, f16, {"blk.0.ffn_up.weight": np.ones(7, np.float32)})


def test_which_levels_weigh_their_rounding():
    on, off = GGUFOptions(), GGUFOptions(imatrix=False)
    assert uses_importance(on, "q4_k_m") and uses_importance(on, "q2_k")
    assert not uses_importance(on, "q8_0") and not uses_importance(on, "f16")
    assert uses_importance(GGUFOptions(embedding_type="q4_0"), "q8_0")  # the table is below 8 bits
    assert not uses_importance(off, "q4_k_m")


def test_a_distilling_build_weighs_the_shipped_files_rounding(tiny_llama_dir, tmp_path):
    """End to end on a tiny model: the importance stage runs on the training split, the shipped q4_0
    file is not llama.cpp's plain rounding of the same reference, and the manifest says which it is."""
    from click.testing import CliRunner

    from edgeft.cli import main
    from tiny_models import tiny_profile

    qa = [(f"Question {i} about {w}?", f"The answer about {w} is {i}.") for i, w in
          enumerate("river copper violin lantern orbit meadow glacier harbor saffron tunnel quartz falcon "
                    "ember canyon velvet prism tundra marble cobalt thistle beacon walnut compass".split())]
    data = write_jsonl(tmp_path / "qa.jsonl", [{"input": q, "target": a} for q, a in qa])
    out = tmp_path / "out"
    profile = tiny_profile(tmp_path, quant="q4_0", runs=1, context=256)
    r = CliRunner().invoke(main, ["build", "--model", str(tiny_llama_dir), "--target", str(profile),
                                  "--data", str(data), "--out", str(out), "--student-layers", "1"])
    assert r.exit_code in (0, 1), r.output  # 1: a budget failed, which is not what this test is about
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["importance"]["tokens"] > 0 and stages["importance"]["file"].endswith("data/train.jsonl")
    assert stages["compile"]["importance"].startswith("rounding weighed")
    assert "model-q4_0.gguf rounded with an importance matrix" in r.output
    from gguf import GGUFReader

    shipped = GGUFReader(out / "model-q4_0.gguf").tensors
    plain = GGUFReader(quantize(Path(stages["compile"]["reference"]), tmp_path / "plain.gguf", "q4_0")).tensors
    assert [(t.name, t.tensor_type) for t in shipped] == [(t.name, t.tensor_type) for t in plain]
    differ = {a.name for a, b in zip(shipped, plain) if a.data.tobytes() != b.data.tobytes()}
    q4_0 = {t.name for t in plain if t.tensor_type.name == "Q4_0"}
    assert "blk.0.ffn_down.weight" in q4_0 and differ == q4_0  # the rest (the q8_0 table here) weighs nothing


def test_a_build_that_trains_nothing_measures_its_datas_prompts(tiny_llama_dir, tmp_path):
    """No training text: the data's training-split prompts, chat-templated, are measured instead;
    `[gguf] imatrix = false` quantizes as llama.cpp does alone."""
    from click.testing import CliRunner

    from edgeft.cli import main
    from tiny_models import tiny_profile

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"input": f"Tell me about the {w} near the {v}."} for w, v in
                                                    zip("river copper violin lantern orbit meadow glacier harbor".split(),
                                                        "tunnel quartz falcon ember canyon velvet prism tundra".split())])

    def build(name: str, extra: str) -> dict:
        out = tmp_path / name
        profile = tiny_profile(tmp_path, quant="q4_0", extra=extra, name=f"{name}.toml")
        r = CliRunner().invoke(main, ["--quiet", "build", "--no-distill", "--no-bench", "--model", str(tiny_llama_dir),
                                      "--target", str(profile), "--data", str(data), "--out", str(out)])
        assert r.exit_code == 0, r.output
        return json.loads((out / "manifest.json").read_text())["stages"]

    weighed = build("weighed", "")
    assert "prompts of" in weighed["importance"]["text"] and 0 < weighed["importance"]["records"] <= 8
    rows = [json.loads(line) for line in (tmp_path / "weighed" / "work" / "importance" / "prompts.jsonl").read_text().splitlines()]
    from transformers import AutoTokenizer

    assert "Tell me about the" in AutoTokenizer.from_pretrained(tiny_llama_dir).decode(sum((r["input_ids"] for r in rows), []))
    assert weighed["compile"]["importance"].startswith("rounding weighed")
    plain = build("plain", "[gguf]\nimatrix = false\n")
    assert "importance" not in plain and plain["compile"]["importance"].startswith("not used")
    assert (tmp_path / "weighed" / "model-q4_0.gguf").read_bytes() != (tmp_path / "plain" / "model-q4_0.gguf").read_bytes()


@pytest.mark.parametrize("arch", sorted(__import__("edgeft.backends.gguf.arch", fromlist=["FAMILIES"]).FAMILIES))
def test_every_family_gets_an_importance_for_every_matrix_it_quantizes(arch, tiny_model_dirs, tmp_path):
    """Each family's HF names map onto the GGUF tensors our converter writes, at the right width: every
    2-D weight a matmul multiplies is weighed (fused ones included), and nothing else."""
    from gguf import GGUFReader

    model_dir = tiny_model_dirs[arch]
    importance.collect(model_dir, _records(tmp_path / "t.jsonl", [list(range(5, 21)), list(range(30, 42))]),
                       tmp_path / importance.FILE)
    weights = gguf_importance(model_dir, importance.load(tmp_path / importance.FILE))
    tensors = {t.name: t for t in GGUFReader(convert(model_dir, tmp_path / "m.gguf", "f16")).tensors}
    matrices = {n for n, t in tensors.items() if len(t.shape) == 2 and n.endswith(".weight")}
    if "output.weight" in tensors:  # an untied token table is only looked up, never multiplied: nothing flows into it
        matrices.discard("token_embd.weight")
    assert set(weights) == matrices
    for name, values in weights.items():
        assert values.shape == (int(tensors[name].shape[0]),) and (values > 0).all(), name


def test_compile_measures_the_importance_on_the_prompts_given(tiny_llama_dir, tmp_path):
    """`edgeft compile --data`: the standalone compile stage weighs its rounding by the user's prompts;
    a missing file is one line, exit 2, and nothing is written."""
    from click.testing import CliRunner

    from edgeft.cli import main
    from tiny_models import tiny_profile

    data = write_jsonl(tmp_path / "mine.jsonl", [{"input": f"Summarise the {w} report."} for w in
                                                 "sales travel audit budget hiring safety".split()])
    profile = tiny_profile(tmp_path, quant="q4_0")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["--quiet", "compile", str(tiny_llama_dir), "--target", str(profile), "--data", str(data),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert "mine.jsonl" in stages["importance"]["text"] and stages["compile"]["importance"].startswith("rounding weighed")
    r = CliRunner().invoke(main, ["compile", str(tiny_llama_dir), "--target", str(profile), "--data", str(tmp_path / "no.jsonl"),
                                  "--out", str(tmp_path / "out2")])
    assert r.exit_code == 2 and "no.jsonl" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out2" / "model-q4_0.gguf").exists()


def test_full_input_sums_are_outer_products_whose_diagonal_is_the_squares(tiny_llama_dir):
    """GPTQ's second moments come from the same pass as the importance matrix, which they leave as it
    is; weights that multiply one input share one sum."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    squares, none, _, n = importance.input_sums(model, rows, batch=2)
    alone, outer, same_as, n_full = importance.input_sums(model, rows, batch=1, full=True)
    assert n == n_full == 8 and none == {} and squares.keys() == outer.keys() == alone.keys()
    for name, full in outer.items():
        assert full.shape == (squares[name].shape[0],) * 2 and torch.allclose(full, full.T)
        assert torch.allclose(torch.diagonal(full), squares[name], rtol=1e-5), name  # float32 products
        assert torch.allclose(alone[name], squares[name], rtol=1e-5), name  # another batching, the same sums
    layer = "model.layers.0"
    assert outer[f"{layer}.self_attn.q_proj.weight"] is outer[f"{layer}.self_attn.v_proj.weight"]
    assert outer[f"{layer}.mlp.gate_proj.weight"] is outer[f"{layer}.mlp.up_proj.weight"]
    assert outer[f"{layer}.mlp.down_proj.weight"] is not outer[f"{layer}.mlp.up_proj.weight"]
    assert same_as[f"{layer}.self_attn.v_proj.weight"] == f"{layer}.self_attn.q_proj.weight"
    assert f"{layer}.self_attn.q_proj.weight" not in same_as
