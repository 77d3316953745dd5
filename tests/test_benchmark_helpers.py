"""The arithmetic and file comparison inside benchmarks/ scripts (not part of the package, but
their figures go into closing notes, so the parts that compute them are tested)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


class BigramRunner:
    """Logits depend on the current token only, so any windowing must give the exact full-text
    perplexity; records every call so the test can check what was fed."""

    def __init__(self, vocab: int, seed: int = 0):
        self.table = np.random.default_rng(seed).normal(size=(vocab, vocab)).astype(np.float32)
        self.calls: list[int] = []

    def logits(self, ids: list[int]) -> np.ndarray:
        self.calls.append(len(ids))
        return self.table[np.asarray(ids)]


def _direct_ppl(table: np.ndarray, ids: list[int]) -> float:
    t = table.astype(np.float64)
    logp = t - np.log(np.exp(t).sum(axis=1, keepdims=True))
    nll = -sum(logp[a, b] for a, b in zip(ids[:-1], ids[1:]))
    return math.exp(nll / (len(ids) - 1))


@pytest.mark.parametrize("window", [4, 7, 16, 1000])
def test_perplexity_scores_every_token_once_whatever_the_window(window):
    g = _load("gguf_vs_reference")
    ids = list(np.random.default_rng(1).integers(0, 11, size=37))
    runner = BigramRunner(11)
    got = g.perplexity(runner, ids, window)
    assert got["tokens_scored"] == len(ids) - 1
    assert max(runner.calls) <= window
    assert got["ppl"] == pytest.approx(_direct_ppl(runner.table, ids), rel=1e-9)


def test_perplexity_uniform_logits_give_vocab_size():
    g = _load("gguf_vs_reference")

    class Uniform:
        def logits(self, ids):
            return np.zeros((len(ids), 50), dtype=np.float32)

    assert g.perplexity(Uniform(), list(range(20)), 8)["ppl"] == pytest.approx(50.0)


def _gguf(path: Path, name: str, extra: dict, weight: np.ndarray) -> Path:
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_block_count(2)
    for key, value in extra.items():
        w.add_uint32(key, value)
    w.add_tensor("token_embd.weight", weight)
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_compare_files_reports_metadata_and_tensor_differences(tmp_path):
    g = _load("gguf_vs_reference")
    weight = np.arange(32, dtype=np.float32).reshape(4, 8)
    changed = weight.copy()
    changed[1, 2] += 0.5
    a = _gguf(tmp_path / "a.gguf", "ours", {"only.a": 1, "shared": 3}, weight)
    b = _gguf(tmp_path / "b.gguf", "ref", {"only.b": 2, "shared": 3}, changed)
    diff = g.compare_files(a, b)
    md = diff["metadata"]
    assert list(md["only_ours"]) == ["only.a"]
    assert list(md["only_ref"]) == ["only.b"]
    assert set(md["different"]) == {"general.name"}
    assert diff["tensors"]["bytes_differ"] == ["token_embd.weight"]
    assert diff["tensors"]["identical"] == 1
    assert diff["tensors"]["max_abs_diff_unquantized"] == pytest.approx(0.5)

    same = g.compare_files(a, a)
    assert not any(same["metadata"].values())
    assert same["tensors"]["identical"] == 2


def test_gnu_time_output_is_parsed():
    w = _load("build_wall_time")
    text = "\tUser time (seconds): 12.50\n\tSystem time (seconds): 1.25\n\tMaximum resident set size (kbytes): 204800\n"
    assert w.parse_gnu_time(text) == {"user_s": 12.5, "system_s": 1.25, "max_single_process_rss_mb": 200.0}


def test_gradient_alignment_is_one_for_a_one_hot_teacher_and_less_for_a_soft_one(tmp_path):
    import torch

    from distill_data import write_prepared
    from edgeft.distill import qlora
    from edgeft.distill.config import DistillConfig
    from edgeft.distill.records import IGNORE, read_records
    from edgeft.distill.teacher_cache import TeacherCache
    from tiny_models import tiny_llama

    cosines = _load("distill_gradient_alignment").cosines
    t_dir = tiny_llama(tmp_path / "t", layers=2)
    data = write_prepared(tmp_path / "d", t_dir, n_train=4, n_eval=1)
    recs = read_records(data / "train.jsonl", vocab_size=10_000, max_length=64)
    targets = torch.tensor([t for r in recs for t in r.labels[1:] if t != IGNORE])
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([sum(t != IGNORE for t in r.labels[1:]) for r in recs]), 0).tolist()])
    torch.manual_seed(0)
    model = qlora.add_lora(qlora.load_base(t_dir, quantize=False), DistillConfig(lora_rank=2, lora_dropout=0.0))
    for p in model.parameters():  # non-zero LoRA B, so every adapter weight has a gradient
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    # k = 1 and log-prob 0 on the target: the KD term is exactly cross-entropy, the gradients coincide
    one_hot = TeacherCache(targets[:, None].to(torch.int32), torch.zeros(len(targets), 1, dtype=torch.float16), offsets)
    assert cosines(model, recs, one_hot, 2, 2, 0, 1.0) == pytest.approx([1.0, 1.0], abs=1e-5)
    # a teacher that puts most of its mass elsewhere pulls another way
    other = (targets + 1) % 100
    soft = TeacherCache(torch.stack([other, targets], 1).to(torch.int32),
                        torch.log(torch.tensor([[0.9, 0.1]] * len(targets))).to(torch.float16), offsets)
    assert max(cosines(model, recs, soft, 2, 2, 0, 1.0)) < 0.9


def test_other_cpu_share_excludes_the_runs_own_work():
    """A CPU-bound benchmark ends with a load average near its thread count; only other
    processes' CPU time may mark it as loaded."""
    run_info = _load("run_info")
    # 2 cores for 100 s = 200 CPU-s; the machine was busy 190 s, 180 of them ours
    assert run_info.other_cpu_share((1000.0, 50.0), (1190.0, 230.0), 100.0, 2) == pytest.approx(0.05)
    # ours counted more than the machine saw (children's times land when waited for): not negative
    assert run_info.other_cpu_share((0.0, 0.0), (10.0, 12.0), 10.0, 2) == 0.0


def test_environment_at_end_judges_others_not_the_run():
    run_info = _load("run_info")
    header = run_info.run_header()
    assert set(header["start"]) == {"monotonic", "cpu_seconds"}
    env = run_info.environment_at_end(header)
    assert "start" not in env and "start" in header  # the JSON gets no clock readings; the header is untouched
    assert 0.0 <= env["other_cpu_share"] and isinstance(env["loaded"], bool)
    # the start load remembers the minute before the run: with the CPU share measured it does not count
    busy_before = {**header, "load_average_start": [99.0, 0.0, 0.0],
                   "start": {"monotonic": header["start"]["monotonic"] - 1000.0, "cpu_seconds": run_info.cpu_seconds()}}
    assert run_info.environment_at_end(busy_before)["loaded"] is False
    no_share = {k: v for k, v in busy_before.items() if k != "start"}
    assert run_info.environment_at_end(no_share)["loaded"] is True
    assert run_info.environment_at_end({**no_share, "load_average_start": [0.1, 0.0, 0.0]})["loaded"] is False
    line = run_info.busy_line({**env, "loaded": True})
    assert "other processes" in line and line.endswith("(LOADED machine: timings are noisy)")


def test_answer_levers_scores_the_six_then_untrained_prompts_and_counts_loops():
    """answer_levers.py: the scored prompts are the bench's six then shipped English prompts that no run
    trained on; a loop is four words coming back three times."""
    from edgeft.bench.source_model import CHAT_PROMPTS

    mod = _load("answer_levers")
    first = mod.scored_prompts(set(), 10)
    assert first[:6] == list(CHAT_PROMPTS) and len(first) == 16
    held_out = set(first[6:9])
    again = mod.scored_prompts(held_out, 10)
    assert not held_out & set(again[6:]) and len(again) == 16
    assert mod.repeats("I'm here to help, and I'm here to help, and I'm here to help.")
    assert not mod.repeats("The capital of France is Paris, the capital of the French Republic.")
    rows = [{"ppl_vs_source_pct": p, "same": p == 0, "artifact": "a b c d"} for p in (0, 10, 60, 300, 20, 40, 49, 51)]
    s = mod.summary(rows)
    assert s["within_line"] == 5 and s["six_within_line"] == 4 and s["six_worst_pct"] == 300 and s["same"] == 1


def test_answer_levers_mlp_pruning_keeps_the_highest_scored_channels_and_at_full_width_the_model(tmp_path):
    """answer_levers.py's width lever: pruned to its own width a model is unchanged; pruned narrower, each
    layer keeps exactly its top-scored channels, in order, and still runs and saves as a Llama."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft import importance
    from tiny_models import tiny_llama, write_jsonl

    mod = _load("answer_levers")
    model_dir = tiny_llama(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 9, 40, 7, 3, 11, 12]])
    with torch.no_grad():
        before = model(ids).logits
    records = write_jsonl(tmp_path / "train.jsonl", [{"input_ids": r} for r in (ids[0].tolist(), [20, 21, 22])])
    importance.collect(model_dir, records, tmp_path / importance.FILE)
    means = {k: torch.from_numpy(v) for k, v in importance.load(tmp_path / importance.FILE).items()}
    scores = mod.mlp_channel_scores(model, means)
    width = model.config.intermediate_size
    assert len(scores) == model.config.num_hidden_layers and scores[0].shape == (width,)
    assert all((s > 0).all() for s in scores)
    down = [layer.mlp.down_proj.weight.detach().clone() for layer in model.model.layers]
    mod.prune_mlp(model, scores, width)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-5)
    mod.prune_mlp(model, scores, width // 4)
    for layer, score, w in zip(model.model.layers, scores, down):
        top = sorted(torch.topk(score, width // 4).indices.tolist())
        assert torch.equal(layer.mlp.down_proj.weight, w[:, top]) and layer.mlp.gate_proj.out_features == width // 4
    with torch.no_grad():
        after = model(ids).logits
    assert torch.isfinite(after).all() and not torch.allclose(after, before, atol=1e-3)
    model.save_pretrained(tmp_path / "pruned")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32).eval()
    assert again.config.intermediate_size == width // 4
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, after, atol=1e-5)
