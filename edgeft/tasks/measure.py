"""Inside the bench's child process: every task's adapter on the shipped base, measured on its runtime.

Per task: latency with its adapter active, the task's quality with it and with the base alone, and
the proof that the runtime applies it: on the unquantized reference export, the runtime with the
adapter gives the logits of the same adapter merged into the weights (transformers, fp32), and without
it, visibly other ones. The switch time between adapters is measured once for the package."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeft.bench.perplexity import log_softmax
from edgeft.distill.records import IGNORE
from edgeft.errors import EdgeftError
from edgeft.tasks.metrics import kind_of, score

if TYPE_CHECKING:
    from edgeft.backends.base import AdapterRunner, Runner
    from edgeft.config import BenchSettings

# The proof's bound: KL (nats/token, mean) between the runtime with the adapter and the merged weights.
# The reference export is f16 and the adapter is applied in f32 beside it: what separates them is f16
# rounding, which the base alone shows too (`export_floor`, measured in the same run, recorded); 1e-3
# is far above it and far below what a trained adapter moves (`kl_base_vs_merged`).
PROOF_KL_MAX = 1e-3
# An adapter counts as applied when leaving it off moves the logits at least this many times further
# from the merged model than leaving it on does: an adapter that changes nothing is an error.
PROOF_APPLIED_RATIO = 10.0
PROOF_RECORDS = 3
ANSWER_TOKENS = 48


def kl_mean(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over positions of KL(p || q), nats."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def split_records(eval_ids: Path, eval_text: Path) -> list[dict]:
    """Each held-out record as its templated prompt ids, its target ids and its target text."""
    texts = [json.loads(line) for line in eval_text.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for row, text in zip((json.loads(line) for line in eval_ids.read_text(encoding="utf-8").splitlines() if line.strip()),
                         texts, strict=True):
        ids, labels = row["input_ids"], row["labels"]
        mask = row.get("attention_mask", [1] * len(ids))
        kept = [i for i, m in enumerate(mask) if m]
        ids, labels = [ids[i] for i in kept], [labels[i] for i in kept]
        first = next((i for i, v in enumerate(labels) if v != IGNORE), None)
        if first is None or first == 0:
            continue
        out.append({"prompt": ids[:first], "target": ids[first:], "gold": text.get("target") or "",
                    "task_type": (text.get("metadata") or {}).get("task_type")})
    return out


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def virtual_tokens(peft_dir: Path) -> int:
    """The cache positions a prefix-tuned adapter takes before every sequence (0 for LoRA)."""
    try:
        config = json.loads((Path(peft_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    return int(config.get("num_virtual_tokens") or 0) if config.get("peft_type") == "PREFIX_TUNING" else 0


def fitting(records: list[dict], context: int) -> list[dict]:
    """The records whose prompt and target fit the runtime's context with room for an answer."""
    return [r for r in records if len(r["prompt"]) + max(len(r["target"]), ANSWER_TOKENS) <= context]


def task_quality(runner: "Runner", records: list[dict], kind: str, eos: set[int]) -> dict:
    """The task's metric from greedy answers (label, fields), or the perplexity of the held-out targets
    (the teacher's answers for a generation task)."""
    if kind == "likelihood":
        total, count = 0.0, 0
        for r in records:
            ids = r["prompt"] + r["target"]
            lp = log_softmax(runner.logits(ids))
            total -= float(sum(lp[len(r["prompt"]) + i - 1, t] for i, t in enumerate(r["target"])))
            count += len(r["target"])
        return {"metric": "target_ppl", "value": float(np.exp(total / max(count, 1))), "records": len(records)}
    answers = [runner.detokenize(_until_eos(runner.generate(r["prompt"], ANSWER_TOKENS).tokens, eos)) for r in records]
    s = score(kind, answers, [r["gold"] for r in records])
    return {"metric": "label_accuracy_pct" if kind == "label" else "field_match_pct", "value": s.value,
            "exact_pct": s.exact, "records": s.records, "examples": [{"gold": r["gold"], "answer": a}
                                                                   for r, a in zip(records[:3], answers[:3])]}


def _latency(runner: "Runner", ids: list[int], settings: "BenchSettings") -> list[dict]:
    runs = []
    for i in range(settings.warmup + settings.runs):
        gen = runner.generate(ids, settings.new_tokens)
        if i >= settings.warmup:
            runs.append({"token_times": gen.token_times, "n_tokens": len(gen.tokens)})
    return runs


def switch_ms(runner: "AdapterRunner", adapters: list[Path], rounds: int = 20) -> float | None:
    """Median time to make another adapter the active one (each file loaded before the clock runs)."""
    if len(adapters) < 2:
        return None
    times = []
    for i in range(rounds * len(adapters)):
        t = time.perf_counter()
        runner.use_adapter(adapters[i % len(adapters)])
        times.append((time.perf_counter() - t) * 1000.0)
    runner.use_adapter(None)
    return float(np.median(times))


def proof(reference_runner: "AdapterRunner", base_dir: Path, peft_dir: Path, adapter: Path, records: list[dict]) -> dict:
    """The adapter on the runtime against the same adapter merged into the weights (a prefix: the peft
    model with it), on the held-out records' own text (prompt and target)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from edgeft.distill.logits import is_prefix

    texts = [(r["prompt"] + r["target"])[:256 - virtual_tokens(peft_dir)] for r in records[:PROOF_RECORDS]]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = [base(input_ids=torch.tensor([ids])).logits[0].numpy() for ids in texts]
    peft_model = PeftModel.from_pretrained(base, str(peft_dir)).eval()
    if is_prefix(peft_model):  # nothing to merge: the peft model itself, its prefix before every text
        merged = peft_model
    else:
        merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        merged_logits = [merged(input_ids=torch.tensor([ids])).logits[0].numpy() for ids in texts]
    reference_runner.use_adapter(adapter)
    with_adapter = [reference_runner.logits(ids) for ids in texts]
    reference_runner.use_adapter(None)
    without = [reference_runner.logits(ids) for ids in texts]
    on = float(np.mean([kl_mean(m, r) for m, r in zip(merged_logits, with_adapter)]))
    off = float(np.mean([kl_mean(m, r) for m, r in zip(merged_logits, without)]))
    floor = float(np.mean([kl_mean(b, r) for b, r in zip(base_logits, without)]))
    matches, applied = on <= PROOF_KL_MAX, off >= PROOF_APPLIED_RATIO * max(on, floor)
    return {"kl_adapter_vs_merged": on, "kl_base_vs_merged": off, "export_floor": floor, "bound": PROOF_KL_MAX,
            "applied_ratio": PROOF_APPLIED_RATIO, "matches": matches, "applied": applied, "tokens": sum(map(len, texts))}


def measure(request: dict) -> dict:
    """`request["timing_only"]`: latency, switch time and memory alone, for a run made again because a
    timing line failed; quality and the proof are deterministic, so the first run's stand."""
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import get_backend
    from edgeft.bench.prompt import prompt_ids
    from edgeft.bench.worker import peak_rss_mb
    from edgeft.config import load_target

    rss_before_load = peak_rss_mb()
    timing_only = bool(request.get("timing_only"))
    target = load_target(request["target"])
    artifact, reference = Artifact.from_json(request["artifact"]), Artifact.from_json(request["reference"])
    backend = get_backend(artifact.backend)
    runner = backend.load(artifact, target)
    results = []
    try:
        eos = {int(runner.metadata().eos_token_id)}
        ids = prompt_ids(runner.tokenize, target.bench.prompt_tokens)
        adapters = [Path(t["adapter"]) for t in request["tasks"]]
        for path in dict.fromkeys(adapters):  # each must belong to this very base file
            backend.check_adapter(path, artifact)
        load_ms = {}
        for path in adapters:  # each file loaded once; later switches are what an app pays
            t = time.perf_counter()
            runner.use_adapter(path)
            load_ms[str(path)] = (time.perf_counter() - t) * 1000.0
        runner.use_adapter(None)
        switch = switch_ms(runner, adapters)
        for task in request["tasks"]:
            if timing_only:
                runner.use_adapter(Path(task["adapter"]))
                results.append({"task": task["task"], "runs": _latency(runner, ids, target.bench)})
                continue
            records = fitting(split_records(Path(task["eval_ids"]), Path(task["eval_text"])),
                              target.bench.context - virtual_tokens(Path(task["peft_adapter"])))[: request.get("max_records", 48)]
            if not records:
                raise EdgeftError(f"task {task['task']}: no held-out record fits the profile's context "
                                  f"({target.bench.context} tokens) with a {ANSWER_TOKENS}-token answer", file=task["eval_ids"])
            kind = kind_of(next((r["task_type"] for r in records), None))
            runner.use_adapter(None)
            base_quality = task_quality(runner, records, kind, eos)
            runner.use_adapter(Path(task["adapter"]))
            runs = _latency(runner, ids, target.bench)
            quality = task_quality(runner, records, kind, eos)
            results.append({"task": task["task"], "kind": kind, "runs": runs, "quality": quality, "base_quality": base_quality,
                            "adapter_load_ms": load_ms[task["adapter"]], "records": records})
        runner.use_adapter(None)
        base_runs = _latency(runner, ids, target.bench)
        rss = peak_rss_mb()  # the base with every adapter loaded, before the proof loads torch models
    finally:
        runner.close()
    timings = {"switch_ms": switch, "base_runs": base_runs, "prompt_tokens": len(ids), "peak_rss_mb": rss,
               "rss_before_load_mb": rss_before_load}
    if timing_only:
        return {"tasks": results, **timings}
    ref_runner = backend.load(reference, target)
    try:
        for task, res in zip(request["tasks"], results):
            res["proof"] = proof(ref_runner, Path(task["base_dir"]), Path(task["peft_adapter"]), Path(task["adapter"]),
                                 res.pop("records"))
    finally:
        ref_runner.close()
    return {"tasks": results, **timings}
