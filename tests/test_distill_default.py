"""End to end on the real default model: its 30-layer teacher distilled into a 15-layer student (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiny_models import CORPUS

pytestmark = pytest.mark.slow


def _prepared(folder, tok, n_train=12, n_eval=4):
    """Chat-templated prompt (masked) + a target text, the way the data stage lays records out."""
    texts = list(dict.fromkeys(CORPUS))
    rows = []
    for i in range(n_train + n_eval):
        prompt = tok.apply_chat_template([{"role": "user", "content": texts[i % len(texts)]}], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt)["input_ids"]
        t_ids = tok(texts[(i + 2) % len(texts)] + "<|im_end|>")["input_ids"]
        ids = (p_ids + t_ids)[:64]
        labels = ([-100] * len(p_ids) + t_ids)[:64]
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return folder


def test_default_teacher_into_15_layer_student_then_merge_and_gguf(tmp_path):
    from edgeft import models
    from edgeft.backends.gguf.backend import LlamaCppRunner
    from edgeft.backends.gguf.convert import convert
    from edgeft.distill import DistillConfig, open_data, run
    from edgeft.merge import merge

    tok = models.load_tokenizer(models.resolve("default"))
    data = open_data(_prepared(tmp_path / "data", tok), "default", tmp_path)
    cfg = DistillConfig(student_layers=15, steps=3, batch_size=2, grad_accum=1, save_every=0, max_eval_records=4, top_k=32)
    adapter = run("default", data, tmp_path / "out", cfg)
    report = json.loads((tmp_path / "out" / "distill.json").read_text())
    assert report["student"]["teacher_layers"] == 30 and report["student"]["layers"] == 15
    assert report["student"]["kept_layers"][0] == 0 and report["student"]["kept_layers"][-1] == 29
    assert 60e6 < report["student"]["parameters"] < 110e6  # 135M minus half the decoder layers
    assert report["config"]["quantize_base"] is True
    ev = report["eval"]
    assert ev["teacher"]["perplexity"] < ev["student_before"]["perplexity"]  # dropping 15 layers hurts
    # even a few steps on few records must move the cut student towards the data
    assert ev["student_after"]["perplexity"] < ev["student_before"]["perplexity"]
    assert 0.0 <= ev["student_after"]["top1_agreement"] <= 1.0

    merged = merge(adapter, tmp_path / "merged", "float16")
    gguf = convert(merged, tmp_path / "student-f16.gguf", "f16")
    runner = LlamaCppRunner(gguf, threads=2, context=128)
    try:
        ids = tok("The capital of France is")["input_ids"]
        logits = runner.logits(ids)
    finally:
        runner.close()
    vocab = json.loads((merged / "config.json").read_text())["vocab_size"]
    assert logits.shape == (len(ids), vocab) and np.isfinite(logits).all()
