"""The A/B gate (issue 17): the interval and verdict logic on samples whose answer is known, the
alternation order, the stored baseline's fingerprint refusal, and `bench --against` end to end on
tiny models. No timing thresholds: timing verdicts are only checked for consistency."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgeft.bench import ab
from edgeft.cli import main
from tiny_models import tiny_profile


def _sample(center: float, spread: float, n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [center + rng.uniform(-spread, spread) for _ in range(n)]


def test_interval_is_the_order_statistics_with_binomial_coverage():
    xs = [float(i) for i in range(1, 21)]  # n = 20: k = 6, coverage 1 - 2 P(X <= 5) = 0.9586
    median, low, high = ab.median_interval(list(reversed(xs)))
    assert (median, low, high) == (10.5, 6.0, 15.0)
    assert 1 - 2 * ab._binom_cdf(5, 20) >= 0.95 > 1 - 2 * ab._binom_cdf(6, 20)
    with pytest.raises(ValueError, match="at least 6"):
        ab.median_interval([1.0] * 5)


def test_clearly_inside_the_tolerance_passes():
    v = ab.verdict("ttft_ms", _sample(1.00, 0.03, 20), 10.0)
    assert v.status == "PASS" and v.high <= 1.10 and v.rounds_to_decide is None


def test_clearly_past_the_tolerance_fails():
    v = ab.verdict("decode_tok_s", _sample(1.30, 0.03, 20), 10.0)
    assert v.status == "FAIL" and v.low > 1.10


def test_an_improvement_passes():
    assert ab.verdict("ms_per_token", _sample(0.7, 0.05, 12), 10.0).status == "PASS"


def test_straddling_is_inconclusive_with_the_rounds_that_would_settle_it():
    v = ab.verdict("ttft_ms", _sample(1.12, 0.15, 12), 10.0)
    assert v.status == "INCONCLUSIVE" and v.low <= 1.10 < v.high
    assert v.rounds_to_decide is not None and v.rounds_to_decide > 12
    # the same spread with its median farther from the limit needs fewer rounds; on the limit, none suffice
    spread = [-0.06, -0.05, -0.04, -0.03, -0.02, -0.01, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    near = ab.verdict("ttft_ms", [1.115 + d for d in spread], 10.0)
    far = ab.verdict("ttft_ms", [1.14 + d for d in spread], 10.0)
    assert near.status == far.status == "INCONCLUSIVE" and far.rounds_to_decide < near.rounds_to_decide
    assert ab.verdict("ttft_ms", [1.10 + d for d in spread], 10.0).rounds_to_decide is None


def test_worse_ratio_is_oriented_so_that_above_one_is_worse():
    assert ab.worse_ratio("ttft_ms", 100.0, 120.0) == pytest.approx(1.2)
    assert ab.worse_ratio("decode_tok_s", 120.0, 100.0) == pytest.approx(1.2)


def test_each_round_runs_each_side_once_in_each_process_in_a_drawn_order():
    plan = ab.round_orders(40, seed=3)
    for order in plan:
        assert sorted(order) == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]
        # two legs, each pairing A and B in different processes, so a process is never idle for a whole leg
        assert {order[0][1], order[1][1]} == {0, 1} and {order[2][1], order[3][1]} == {0, 1}
    firsts = [o[0][0] for o in plan]
    assert 10 <= firsts.count("A") <= 30  # neither side always first
    assert len({tuple(o) for o in plan}) > 4  # the order is drawn, not fixed
    assert plan == ab.round_orders(40, seed=3) and plan != ab.round_orders(40, seed=4)


def test_a_per_process_speed_factor_cancels_in_the_round_ratio():
    """Process 1 runs everything 8 % slower: identical sides still pair at exactly 1."""
    speed = {0: 1.0, 1: 1.08}
    for order in ab.round_orders(10, seed=1):
        t = {"A": [], "B": []}
        for label, process in order:
            t[label].append(100.0 * speed[process])
        a, b = ab.round_value(*t["A"]), ab.round_value(*t["B"])
        assert ab.worse_ratio("ttft_ms", a, b) == pytest.approx(1.0)
        assert ab.worse_ratio("decode_tok_s", 1000 / a, 1000 / b) == pytest.approx(1.0)


def test_overall_verdict():
    p = ab.verdict("a", _sample(1.0, 0.01, 10), 10)
    f = ab.verdict("b", _sample(1.5, 0.01, 10), 10)
    i = ab.verdict("c", _sample(1.1, 0.05, 10), 10)
    assert ab.overall([p, p]) == "PASS" and ab.overall([p, i]) == "INCONCLUSIVE" and ab.overall([i, f]) == "FAIL"


# ---- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_pair(tiny_gguf, tmp_path_factory):
    from edgeft.backends.gguf.backend import quantize

    tmp = tmp_path_factory.mktemp("ab")
    q8 = quantize(tiny_gguf, tmp / "model-q8_0.gguf", "q8_0", threads=1)
    copy = tmp / "copy" / "model-q8_0.gguf"
    copy.parent.mkdir()
    copy.write_bytes(q8.read_bytes())
    return tmp, q8, copy, tiny_gguf


def _against(tmp, new, old, extra=()):
    profile = tiny_profile(tmp, quant="q8_0", name="ab.toml")
    out = tmp / f"ab-{new.parent.name}-{old.stem}"
    out.mkdir(exist_ok=True)
    args = ["--quiet", "bench", str(new), "--target", str(profile), "--against", str(old), "--rounds", "6",
            "--json", str(out / "ab.json"), "--summary", str(out / "ab.md"), "--junit", str(out / "ab.xml"), "--plot", str(out / "ab.png"),
            *extra]
    return CliRunner().invoke(main, args), out


def test_against_itself_reports_every_output_and_a_consistent_exit_code(gguf_pair):
    tmp, q8, copy, _ = gguf_pair
    result, out = _against(tmp, copy, q8)
    data = json.loads((out / "ab.json").read_text())
    assert {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[data["verdict"]] == result.exit_code, result.output
    assert len(data["rounds"]) == 6 and all(sorted(r["order"].split()) == ["A0", "A1", "B0", "B1"] for r in data["rounds"])
    assert {v["metric"] for v in data["verdicts"]} == set(ab.TIMED)
    static = {s["metric"]: s for s in data["static"]}
    assert static["package_mb"]["old"] == static["package_mb"]["new"] and static["ppl"]["status"] == "PASS"
    assert "### edgeft bench" in (out / "ab.md").read_text() and "<testsuite" in (out / "ab.xml").read_text()
    assert (out / "ab.png").read_bytes()[:4] == b"\x89PNG"


def test_a_larger_file_fails_the_gate_on_size(gguf_pair):
    """The f16 file against q8_0: 1.9x the package, past any tolerance, measured once per side: exit 1."""
    tmp, q8, _, f16 = gguf_pair
    result, out = _against(tmp, f16, q8, ["--tolerance", "10%"])
    assert result.exit_code == 1, result.output
    static = {s["metric"]: s for s in json.loads((out / "ab.json").read_text())["static"]}
    assert static["package_mb"]["status"] == "FAIL"


def test_against_works_for_onnx(tiny_llama_dir, tmp_path):
    from edgeft.backends.onnx.backend import OnnxBackend
    from edgeft.config import load_target
    from edgeft.sweep import compile_one

    profile = tiny_profile(tmp_path, backend="onnx", quant="int4", name="onnx.toml")
    artifact = compile_one(OnnxBackend(), tiny_llama_dir, load_target(profile), tmp_path / "o")
    result = CliRunner().invoke(main, ["--quiet", "bench", str(artifact.path), "--target", str(profile), "--against",
                                       str(artifact.path), "--rounds", "6", "--json", str(tmp_path / "ab.json")])
    data = json.loads((tmp_path / "ab.json").read_text())
    assert {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[data["verdict"]] == result.exit_code, result.output
    assert data["new"]["backend"] == data["old"]["backend"] == "onnx"


def test_a_build_folder_is_taken_as_the_old_side(gguf_pair, tiny_llama_dir):
    from edgeft.bench.against import resolve_artifact

    tmp, q8, _, _ = gguf_pair
    out = tmp / "build"
    profile = tiny_profile(tmp, quant="q8_0", name="b.toml")
    assert CliRunner().invoke(main, ["--quiet", "compile", str(tiny_llama_dir), "--target", str(profile), "--out", str(out)]).exit_code == 0
    art = resolve_artifact(out, "gguf")
    assert art.path == out / "model-q8_0.gguf" and (art.backend, art.quant) == ("gguf", "q8_0")


def test_too_few_rounds_is_bad_input(gguf_pair):
    tmp, q8, copy, _ = gguf_pair
    result, _ = _against(tmp, copy, q8, ["--rounds", "3"])
    assert result.exit_code == 2 and "at least 6 rounds" in result.output


def test_a_stored_baseline_from_another_machine_is_refused(gguf_pair):
    tmp, q8, _, _ = gguf_pair
    profile = tiny_profile(tmp, quant="q8_0", name="fp.toml")
    first = tmp / "first.json"
    assert CliRunner().invoke(main, ["--quiet", "bench", str(q8), "--target", str(profile), "--json", str(first)]).exit_code == 0
    data = json.loads(first.read_text())
    data["machine"]["cpu"] = "Another CPU"
    other = tmp / "other-machine.json"
    other.write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, "-m", "edgeft.cli", "--quiet", "bench", str(q8), "--target", str(profile),
                           "--baseline", str(other)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgeft: ")]
    assert len(lines) == 1 and "cpu: Another CPU" in lines[0] and "--against" in lines[0]
    allowed = CliRunner().invoke(main, ["--quiet", "bench", str(q8), "--target", str(profile), "--baseline", str(other),
                                        "--allow-fingerprint-mismatch", "--tolerance", "1000%"])
    assert allowed.exit_code == 0, allowed.output
    assert "not comparable" in allowed.output and "cannot tell the machine's drift" in allowed.output
