"""Quality metrics on the real default model (slow): the numbers must be those of a working
language model, and q4_k_m must sit measurably but not far from its f16 reference."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_default_build_measures_quality_against_its_f16_conversion(default_build):
    out, result = default_build
    assert result.exit_code in (0, 1), result.output  # 1: a latency budget missed on a slow machine
    bench = json.loads((out / "bench.json").read_text())
    m = bench["metrics"]
    # SmolLM2-135M-Instruct on plain English prose: a broken runner or scorer gives hundreds or thousands
    assert 3 < m["ref_ppl"] < 60, m["ref_ppl"]
    assert 0 < m["kl_mean"] < 0.5 and m["kl_p99"] > m["kl_mean"]
    assert 70 < m["top1_agree_pct"] < 100
    assert -5 < m["ppl_increase_pct"] < 25
    assert bench["eval"]["reference"].endswith("model-f16.gguf") and bench["eval"]["tokens_scored"] > 1000
    rc = bench["runtime_counters"]
    assert rc["harness_decode_steps"] == rc["n_eval"]
